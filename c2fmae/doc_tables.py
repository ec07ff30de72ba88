"""The tables of docs/TRAINER.md that are computed from the code, so the docs cannot drift from it.

    python -m c2fmae.doc_tables            # rewrite the generated blocks of docs/TRAINER.md
    python -m c2fmae.doc_tables --check    # exit 1 when they are stale (a test runs this)

A block sits between `<!-- generated: NAME -->` and `<!-- end generated -->`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .masking import Curriculum, curriculum_picks
from .model import C2FMAE, MODELS, STAGES, model_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "TRAINER.md"
TABLE_CLASSES = 150  # ADE20K's label space, the default semantic labeler's
PROGRESS = (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
DRAWS = 100_000


def _costs(name: str, stages: tuple[str, ...], link: str) -> tuple[int, float, float]:
    """(decoder parameters, decoder GFLOPs, encoder GFLOPs) per 224 image at mask ratio 0.75,
    counted by torch's FlopCounterMode on a meta-device model (shapes only, nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = C2FMAE(model_config(name, num_classes=TABLE_CLASSES, stages=stages, cascade_link=link)).to("meta")
        length = model.num_patches
        keep = length - round(0.75 * length)
        params = sum(
            p.numel() for n, p in model.named_parameters() if n.startswith(("decoder_embed", "mask_token", "stages"))
        )
        with FlopCounterMode(display=False) as dec:
            model.forward_decoder(torch.empty(1, keep + 1, model.cfg.embed_dim), torch.arange(length)[None])
        with FlopCounterMode(display=False) as enc:
            model.forward_encoder(torch.empty(1, 3, 224, 224), torch.zeros(1, length), keep=keep)
    return params, dec.get_total_flops() / 1e9, enc.get_total_flops() / 1e9


def decoder_table() -> str:
    rows = [
        "| model | encoder (width x blocks, heads, patch) | decoder (width, heads) | MAE mode | cascade "
        "| decoder params, M: MAE / add / xattn | decoder GFLOPs: MAE / add / xattn "
        "| whole model vs MAE: add / xattn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        mae_cfg, casc_cfg = model_config(name, stages=("pixel",)), model_config(name)
        p_mae, f_mae, f_enc = _costs(name, ("pixel",), "add")
        p_add, f_add, _ = _costs(name, STAGES, "add")
        p_x, f_x, _ = _costs(name, STAGES, "xattn")
        m = casc_cfg
        rows.append(
            f"| `{name}` | {m.embed_dim} x {m.depth}, {m.num_heads}, {m.patch_size} "
            f"| {m.decoder_dim}, {m.decoder_heads} | {mae_cfg.decoder_depths[0]} blocks "
            f"| {' + '.join(map(str, m.decoder_depths))} blocks "
            f"| {p_mae / 1e6:.1f} / {p_add / 1e6:.1f} / {p_x / 1e6:.1f} "
            f"| {f_mae:.2f} / {f_add:.2f} / {f_x:.2f} "
            f"| {(f_enc + f_add) / (f_enc + f_mae):.2f} / {(f_enc + f_x) / (f_enc + f_mae):.2f} |"
        )
    return "\n".join(rows)


def curriculum_table(curriculum: Curriculum | None = None) -> str:
    """Probabilities at each progress point, and what `curriculum_picks` (the trainer's draw) gives
    for 100,000 images there."""
    curriculum = curriculum or Curriculum()
    g = torch.Generator().manual_seed(0)
    rows = [
        "| progress | P(semantic) / P(instance) / P(random) | drawn for 100k images: semantic / instance / random |",
        "|---|---|---|",
    ]
    for t in PROGRESS:
        p = curriculum.probs(t)
        drawn = torch.bincount(curriculum_picks(DRAWS, p, g), minlength=len(p)).double() / DRAWS
        rows.append(
            f"| {t:.2f} | {' / '.join(f'{100 * x:.1f}%' for x in p)} "
            f"| {' / '.join(f'{100 * x:.1f}%' for x in drawn.tolist())} |"
        )
    return "\n".join(rows)


TABLES = {"decoders": decoder_table, "curriculum": curriculum_table}
_BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def render(text: str) -> str:
    return _BLOCK.sub(lambda m: m[1] + TABLES[m[2]]() + "\n" + m[4], text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/TRAINER.md is stale")
    args = ap.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC} is stale: run python -m c2fmae.doc_tables", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
