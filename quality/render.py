"""Pictures and the page: matplotlib plots as PNG bytes, overlay strips drawn with shards.inspect's
helpers, and one self-contained HTML file (every image embedded as a data URI) from a Jinja2
template of `quality/templates/` (package data) with autoescaping on: every value a page shows (a
folder name, a file name, a class name from a manifest) is escaped by the engine, none by hand.

matplotlib is driven through `Figure` + the Agg canvas, never pyplot: no global state, no GUI
backend, safe in any process.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

BG = (24, 24, 24)
FG = (230, 230, 230)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # Fixed margins (subplots_adjust below), not a layout engine: constrained layout measures every
    # tick label and took most of the report's fixed cost.
    return Figure(figsize=(width, height), dpi=100)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray, str]], cols: int = 3) -> bytes:
    """Small multiples: each panel is (title, counts [B], edges [B + 1], x label)."""
    rows = -(-len(panels) // cols)
    fig = _figure(3.4 * cols, 2.3 * rows)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.6 / (2.3 * rows), top=1 - 0.35 / (2.3 * rows), wspace=0.25)
    fig.subplots_adjust(hspace=0.75)
    for i, (title, counts, edges, xlabel) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.stairs(counts, edges, fill=True, color="#4c72b0")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    return _png(fig)


def bars(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> bytes:
    """Horizontal bars, first label on top."""
    height = 0.9 + 0.22 * max(len(labels), 1)
    fig = _figure(6.0, height)
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.5 / height, top=1 - 0.3 / height)
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color="#55a868")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return _png(fig)


def heatmap(
    matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, xlabel: str, ylabel: str
) -> bytes:
    """[R, C] values in 0..1 as a grid with labelled axes."""
    width, height = 3.2 + 0.2 * len(cols), 2.2 + 0.2 * len(rows)
    fig = _figure(width, height)
    fig.subplots_adjust(left=1.6 / width, right=1 - 0.4 / width, bottom=1.6 / height, top=1 - 0.4 / height)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.6)
    return _png(fig)


def strip(samples: Sequence[tuple[str, Sequence[Image.Image]]], per_row: int = 2, gap: int = 6) -> bytes:
    """Samples side by side, `per_row` to a row, each a caption over its tiles: the worst-image
    pictures. JPEG (quality 85): these are photographs, ~10x smaller than PNG."""
    if not samples:
        raise ValueError("nothing to draw")
    cell_w = max(sum(t.width + 2 for t in tiles) for _, tiles in samples) + gap
    cell_h = max(max(t.height for t in tiles) for _, tiles in samples) + 16
    rows = -(-len(samples) // per_row)
    im = Image.new("RGB", (cell_w * min(per_row, len(samples)), cell_h * rows), BG)
    draw = ImageDraw.Draw(im)
    for i, (caption, tiles) in enumerate(samples):
        x, y = (i % per_row) * cell_w, (i // per_row) * cell_h
        draw.text((x + 2, y + 2), caption, fill=FG)
        for t in tiles:
            im.paste(t, (x, y + 15))
            x += t.width + 2
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def disagreement(rgb: np.ndarray, differ: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB, darkened, with pixels where two label maps differ in red."""
    out = (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    out[differ] = (230, 40, 40)
    return out


# --- the page -------------------------------------------------------------------------------------


def ext(data: bytes) -> str:
    """File extension of an encoded picture: png or jpg."""
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def json_safe(obj: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python numbers (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def data_uri(data: bytes) -> str:
    """An embedded PNG or JPEG (told apart by their signatures) as a `data:` URI."""
    mime = "image/png" if ext(data) == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@functools.cache
def _templates():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("quality", "templates"),
        autoescape=True,  # every template, whatever its name: values are text, never markup
        undefined=jinja2.StrictUndefined,  # a name the page needs and was not given is an error, not ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        num=fmt_num,
        datauri=data_uri,
        problem_row=lambda p: [p["shard"], p["key"] or "", p["message"]],
        pair_row=lambda p: [f"{p[0]} {p[2]}", f"{p[1]} {p[3]}"],
    )
    return env


def page(template: str, **context: Any) -> str:
    """The HTML page of `quality/templates/{template}` with `context`."""
    return _templates().get_template(template).render(**context)


def fmt_num(v: float, digits: int = 3) -> str:
    """A number for a table: '' for NaN, integers without decimals."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if float(v).is_integer() and abs(v) >= 1:
        return f"{int(v)}"
    return f"{v:.{digits}g}"
