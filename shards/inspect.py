"""`c2f inspect`: a PNG grid (RGB | semantic overlay + legend | instance overlay + contours) and
a stats summary, so people can look at their labels. PIL and numpy only: no torch."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import format as fmt
from .errors import DataError
from .image import BadImage, load_image, open_image
from .manifest import LabelSpace, Manifest, ManifestError, ManifestMissing, load_json, read_manifest
from .pack import decode_png
from .tar import TarError, read_samples

TILE = 256  # longest side of each tile in the grid
ALPHA = 0.5


class InspectError(DataError):
    """Nothing to draw, or a sample that does not read; the message names the shard."""


def palette(n: int) -> np.ndarray:
    """A fixed colour per id (the same in every run and every dataset): [n, 3] uint8."""
    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, (max(n, 1), 3)).astype(np.uint8)
    return pal


def _shards(path: Path) -> tuple[list[Path], Manifest | None]:
    """The shards at `path` (a directory or one shard) and the manifest beside them, if any."""
    if not path.exists():
        raise InspectError(f"no such file or directory: {path}")
    if path.is_dir():
        shards, folder = sorted(p for p in path.iterdir() if fmt.parse_shard_name(p.name)), path
    else:
        shards, folder = [path], path.parent
    if not shards:
        raise InspectError(f"no shards in {path} (no PREFIX-NNNNNN.tar files)")
    try:
        return shards, read_manifest(folder)
    except ManifestMissing:
        return shards, None
    except ManifestError as e:
        raise InspectError(f"{e}; run `c2f validate`") from None


def _read(shard: Path):
    try:
        yield from read_samples(str(shard))
    except TarError as e:
        raise InspectError(f"{shard.name}: {e}") from None
    except OSError as e:
        raise InspectError(f"{shard.name}: cannot read ({e})") from None


def _overlay(rgb: np.ndarray, ids: np.ndarray, pal: np.ndarray, skip: int | None) -> np.ndarray:
    colour = pal[np.minimum(ids, len(pal) - 1)].astype(np.float32)
    blend = (1 - ALPHA) * rgb + ALPHA * colour
    keep = ids == skip if skip is not None else np.zeros(ids.shape, bool)
    return np.where(keep[..., None], rgb, blend).astype(np.uint8)


def _contours(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    return edge & (ids > 0)


def tile(arr: np.ndarray, size: int = TILE) -> Image.Image:
    """[H, W, 3] uint8 -> an image of at most `size` pixels a side (nearest: label colours stay exact)."""
    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.Resampling.NEAREST)
    return im


def semantic_overlay(rgb: np.ndarray, sem: np.ndarray, pal: np.ndarray, ignore: int) -> np.ndarray:
    """[H, W, 3] RGB with each class's palette colour blended in; ignore pixels stay as they are."""
    return _overlay(rgb, sem, pal, ignore)


def instance_overlay(rgb: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB with a colour per instance id and white contours; id 0 stays as it is."""
    inst_pal = np.random.default_rng(int(inst.max()) + 7).integers(40, 256, (int(inst.max()) + 1, 3)).astype(np.uint8)
    out = _overlay(rgb, inst.astype(np.int64), inst_pal, 0)
    out[_contours(inst)] = 255
    return out


def sample_tiles(s: dict[str, bytes], pal: np.ndarray, ignore: int, size: int = TILE) -> list[Image.Image]:
    """RGB | semantic overlay | instance overlay of one sample's members, each at most `size` pixels.
    Decoding is bounded (a JPEG only, at most MAX_PIXELS); a sample whose maps do not match its
    image raises ValueError (KeyError for a missing member, BadImage for an image that does not decode)."""
    rgb = np.asarray(load_image(open_image(s[fmt.JPG], ("JPEG",), fmt.MAX_PIXELS)).convert("RGB"))
    sem, inst = decode_png(s[fmt.SEM]), decode_png(s[fmt.INST])
    if sem.shape != rgb.shape[:2] or inst.shape != rgb.shape[:2]:
        raise ValueError(f"maps {sem.shape}/{inst.shape} differ from the image {rgb.shape[:2]}")
    return [
        tile(rgb, size),
        tile(semantic_overlay(rgb, sem, pal, ignore), size),
        tile(instance_overlay(rgb, inst), size),
    ]


LEGEND_W = 220  # the class legend beside each sample's tiles
LEGEND_ROWS = 12  # classes listed per sample
ROWS_PER_COLUMN = 8  # more samples than this are laid out in columns side by side


def draw_grid(
    rows: list[tuple[str, list[Image.Image], list[int]]], pal, names: dict[int, str], ignore: int
) -> Image.Image:
    """One block per sample: its key, then RGB | semantic | instances at their own height, and the
    legend of its classes beside them. Each block is as tall as its own tiles (or legend), so
    landscape images leave no empty bands; blocks fill columns of ROWS_PER_COLUMN."""
    header, gap = 14, 6
    block_w = 3 * (TILE + 4) + LEGEND_W

    def legend(classes: list[int]) -> list[int]:
        return [c for c in classes if c != ignore][:LEGEND_ROWS]

    heights = [header + max(max(t.height for t in tiles), 13 * len(legend(cls))) + gap for _, tiles, cls in rows]
    columns = [list(range(i, min(i + ROWS_PER_COLUMN, len(rows)))) for i in range(0, len(rows), ROWS_PER_COLUMN)]
    grid_h = max(sum(heights[i] for i in col) for col in columns)
    grid = Image.new("RGB", (block_w * len(columns), grid_h), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    for c, col in enumerate(columns):
        x0, y = c * block_w, 0
        for i in col:
            key, tiles, classes = rows[i]
            draw.text((x0 + 4, y + 1), key, fill=(230, 230, 230))
            for j, t in enumerate(tiles):
                grid.paste(t, (x0 + j * (TILE + 4), y + header))
            lx, ly = x0 + 3 * (TILE + 4) + 4, y + header
            for cid in legend(classes):
                draw.rectangle((lx, ly, lx + 10, ly + 10), fill=tuple(int(v) for v in pal[min(cid, len(pal) - 1)]))
                draw.text((lx + 16, ly), f"{cid} {names.get(cid, '?')}", fill=(230, 230, 230))
                ly += 13
            y += heights[i]
    return grid


def _title(key: str, s: dict[str, bytes]) -> str:
    """The line above a sample's tiles: its key, and the prompt it was labeled with, if any."""
    try:
        prompt = load_json(s[fmt.META], ".json").get("prompt")
    except (KeyError, ValueError, AttributeError):
        prompt = None
    return f'{key}   prompt: "{prompt[:80]}"' if isinstance(prompt, str) else key


def inspect(path: str, out: str, samples: int = 8, seed: int = 0) -> str:
    shards, manifest = _shards(Path(path))
    space = manifest.label_space if manifest else LabelSpace(semantic={})
    names, num_classes, ignore = space.semantic_names, space.num_classes, space.ignore
    chosen = []
    n_samples = n_bytes = 0
    class_pixels: Counter[int] = Counter()
    inst_counts: list[int] = []
    reencoded = 0
    prompted = found = 0  # text-prompted presets: samples with a prompt, and those where it found its object
    for shard in shards:
        n_bytes += shard.stat().st_size
        for key, s in _read(shard):
            n_samples += 1
            try:
                sem = decode_png(s[fmt.SEM])
                meta = load_json(s[fmt.META], ".json")
                if not isinstance(meta, dict):
                    raise ValueError(".json is not an object")
            except (KeyError, ValueError, OSError) as e:
                raise InspectError(f"{shard.name} {key}: unreadable sample ({e}); run `c2f validate`") from None
            ids, counts = np.unique(sem, return_counts=True)
            class_pixels.update(dict(zip(ids.tolist(), counts.tolist(), strict=True)))
            inst_counts.append(len(meta.get("instances", [])))
            reencoded += bool(meta.get("reencoded"))
            if isinstance(meta.get("prompt"), str):
                prompted += 1
                found += bool(meta.get("instances"))
            if seed == 0 and len(chosen) < samples:
                chosen.append((key, s, shard.name))
            elif seed:
                chosen.append((key, None, shard.name))  # reservoir of keys, second pass below
    if seed:
        pick = set(random.Random(seed).sample([k for k, _, _ in chosen], min(samples, len(chosen))))
        chosen = [(k, s, shard.name) for shard in shards for k, s in _read(shard) if k in pick]
    pal = palette(max(num_classes, int(max(class_pixels, default=0)) + 1))
    rows = []
    for key, s, shard_name in chosen:
        try:
            title = _title(key, s)
            rows.append((title, sample_tiles(s, pal, ignore), np.unique(decode_png(s[fmt.SEM])).tolist()))
        except (KeyError, ValueError, BadImage) as e:
            raise InspectError(f"{shard_name} {key}: unreadable sample ({e}); run `c2f validate`") from None
    if not rows:
        raise InspectError(f"no samples in {path}")
    grid = draw_grid(rows, pal, names, ignore)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)

    total_px = sum(class_pixels.values()) or 1
    top = sorted(class_pixels.items(), key=lambda kv: -kv[1])[:10]
    lines = [
        f"{len(shards)} shards, {n_samples} samples, {n_bytes / 1e6:.1f} MB, {reencoded} re-encoded",
        f"instances per image: mean {np.mean(inst_counts):.1f}, min {min(inst_counts)}, max {max(inst_counts)}",
        "semantic classes by pixel share:",
        *(
            f"  {cid:>5} {('ignore' if cid == ignore else names.get(cid, '?')):<20} {100 * n / total_px:5.1f}%"
            for cid, n in top
        ),
    ]
    if prompted:
        lines.append(f"text prompts: found their object in {found} of {prompted} samples, {prompted - found} not found")
    if manifest and manifest.labeler.untrained:
        lines.append(f"note: preset {manifest.labeler.preset!r}: these labels are not from a trained model")
    lines.append(f"grid: {out} ({len(rows)} samples: RGB | semantic | instances)")
    return "\n".join(lines)
