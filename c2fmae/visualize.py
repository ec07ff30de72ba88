"""One PNG per logged step: input | what the encoder saw (masked; FOLK's filtered view; SRMAE's
low-resolution patches) | pixel reconstruction | semantic target | semantic prediction |
instance target (foreground, boundaries, centres) | instance prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import MEAN, STD
from .model import INSTANCE_TARGETS, patchify, unpatchify

TILE = 160


def _palette(n: int) -> np.ndarray:
    return np.random.default_rng(12345).integers(40, 256, (n + 1, 3)).astype(np.uint8)


def _rgb(x: torch.Tensor) -> np.ndarray:
    return (x.float().cpu() * STD + MEAN).clamp(0, 255).byte().permute(1, 2, 0).numpy()


def _tile(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr).resize((TILE, TILE), Image.Resampling.NEAREST)


def _instance_rgb(maps: np.ndarray, target: str) -> np.ndarray:
    """Boundary red, foreground green; blue: the centre heatmap (centre target) or a tint of the
    foreground (local target). maps: [K, Hc, Wc] in [0, 1]."""
    blue = maps[2] if target == "centre" else maps[0] * 0.3
    return (np.clip(np.stack([maps[1], maps[0], blue], -1), 0, 1) * 255).astype(np.uint8)


@torch.no_grad()
def save_reconstruction(path: Path, batch, mask, preds, mcfg, seen=None) -> None:
    """`mask` [N, L]: where the loss counted (the reconstruction is shown there, the image
    elsewhere); `seen`: the encoder's input where it is not the masked image (FOLK, SRMAE)."""
    p, cells = mcfg.patch_size, mcfg.patch_size // mcfg.cell_size
    img = batch["image"][:1].float().cpu()
    m = mask[:1].float().cpu()  # [1, L]
    tiles = [("input", _tile(_rgb(img[0])))]
    if seen is not None:
        tiles.append(("encoder in", _tile(_rgb(seen[0].float().cpu()))))
    else:
        masked = patchify(img, p) * (1 - m).unsqueeze(-1)
        tiles.append(("masked", _tile(_rgb(unpatchify(masked, p)[0]))))
    if "pixel" in preds:
        rec = preds["pixel"][:1].float().cpu()
        if mcfg.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
            t = patchify(img, p)
            rec = rec * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
        rec = rec * m.unsqueeze(-1) + patchify(img, p) * (1 - m).unsqueeze(-1)
        tiles.append(("pixels", _tile(_rgb(unpatchify(rec, p)[0]))))
    pal = _palette(mcfg.num_classes)
    sem = batch["sem_cells"][0].cpu().clamp(max=mcfg.num_classes).numpy()
    tiles.append(("semantic", _tile(pal[sem])))
    if "semantic" in preds:
        logits = preds["semantic"][:1].float().cpu().reshape(1, -1, cells * cells, mcfg.num_classes).argmax(-1)
        tiles.append(("sem. pred", _tile(pal[unpatchify(logits.float(), cells, 1)[0, 0].long().numpy()])))
    inst_t = batch["inst_cells"][0].cpu().numpy()
    tiles.append(("instances", _tile(_instance_rgb(inst_t, mcfg.instance_target))))
    if "instance" in preds:
        k = len(INSTANCE_TARGETS[mcfg.instance_target])
        pred = torch.sigmoid(preds["instance"][:1].float().cpu())  # [1, L, cells*cells*K]
        maps = unpatchify(pred, cells, k)[0].numpy()  # [K, Hc, Wc]
        tiles.append(("inst. pred", _tile(_instance_rgb(maps, mcfg.instance_target))))
    canvas = Image.new("RGB", (len(tiles) * (TILE + 4), TILE + 16), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for i, (name, t) in enumerate(tiles):
        canvas.paste(t, (i * (TILE + 4), 16))
        draw.text((i * (TILE + 4) + 2, 2), name, fill=(230, 230, 230))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
