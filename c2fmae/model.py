"""C2FMAE: a ViT masked autoencoder with a cascaded semantic -> instance -> pixel decoder.

Modules and pure helpers only. Conventions:
    imgs:  [N, 3, H, W] float, normalised          mask: [N, L], 0 = keep, 1 = removed
    sem:   [N, H/c, W/c] long class ids (c = cell size: 4 px at patch 16), ignore value = `ignore_index`
    inst:  [N, K, H/c, W/c] float, the instance target's K channels (INSTANCE_TARGETS): centre
           (foreground, boundary, centre heatmap, offset y, offset x to the instance's centre, in
           patches; Panoptic-DeepLab's encoding) or local (foreground, boundary, same-instance-as-
           right, -as-below)
L = (H/p)*(W/p) patches; each patch holds (p/c)^2 cells.

With `stages=("pixel",)` and random masking the model is exactly MAE (He et al. 2021).
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STAGES = ("semantic", "instance", "pixel")  # the granularities, coarse to fine
LINKS = ("add", "xattn")  # how a cascade stage sees the previous stage
# The instance stage's target channels per cell (c2fmae/data.py builds them, docs/TRAINER.md argues them).
INSTANCE_TARGETS: dict[str, tuple[str, ...]] = {
    "centre": ("foreground", "boundary", "centre", "offset_y", "offset_x"),
    "local": ("foreground", "boundary", "right", "down"),
}
OFFSET_WEIGHT = 0.01  # per pixel of offset error: Panoptic-DeepLab's L1 weight (our offsets are in patches)


@dataclass
class ModelConfig:
    img_size: int = 224  # input side, pixels
    patch_size: int = 16  # ViT patch side, pixels
    cell_size: int = 4  # semantic/instance targets are predicted per cell of cell_size^2 pixels
    embed_dim: int = 768  # encoder width
    depth: int = 12  # encoder blocks
    num_heads: int = 12  # encoder heads
    mlp_ratio: float = 4.0  # encoder MLP width / embed_dim
    decoder_dim: int = 512  # decoder width (all stages)
    decoder_depths: tuple[int, ...] = (2, 2, 4)  # blocks of each decoder stage, in `stages` order
    decoder_heads: int = 16  # decoder heads (all stages)
    decoder_mlp_ratio: float = 4.0  # decoder MLP width / decoder_dim
    num_classes: int = 150  # semantic label space of the shards (manifest)
    ignore_index: int = 255  # semantic ignore value of the shards
    stages: tuple[str, ...] = STAGES  # decoder stages, coarse to fine
    cascade: bool = True  # stage k sees stage k-1's features (False: parallel heads, the ablation)
    cascade_link: str = "add"  # add: x + Linear(prev) per position; xattn: x attends to prev's tokens
    multimodal_input: bool = False  # also embed visible patches' semantic/instance maps as tokens
    norm_pix_loss: bool = True  # MAE: normalise each target patch by its mean and variance
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # semantic, instance, pixel
    norm_eps: float = 1e-6  # LayerNorm epsilon everywhere (MAE's)
    lowres_factor: int = (
        0  # SRMAE: patches may reach the encoder downsampled by this factor, through their own embedding (0: off)
    )
    distill: bool = False  # FOLK: an EMA teacher encodes the original image; the student predicts its tokens
    distill_weight: float = 1.0  # FOLK: weight of the distillation term in the total loss
    projector_hidden: int = 0  # FOLK: hidden width of the student's projector (0: 4 x embed_dim)
    instance_target: str = "centre"  # centre: heatmap + offsets to the instance's centre; local: affinities
    freq_weight: float = 0.0  # FOLK: weight of the loss on the removed frequencies (0: off)

    # What a checkpoint written before a field existed meant by leaving it out.
    ABSENT: ClassVar[dict[str, Any]] = {"instance_target": "local", "freq_weight": 0.0}

    def __post_init__(self):
        problems = []
        if self.img_size % self.patch_size or self.patch_size % self.cell_size:
            problems.append(
                f"img_size {self.img_size}, patch_size {self.patch_size} and cell_size {self.cell_size} "
                "must each divide the one before"
            )
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            problems.append("widths must be multiples of their head counts")
        if not self.stages or any(s not in STAGES for s in self.stages) or len(set(self.stages)) < len(self.stages):
            problems.append(f"stages {','.join(self.stages)}: use distinct ones of {', '.join(STAGES)}")
        if len(self.decoder_depths) != len(self.stages) or min(self.decoder_depths, default=0) < 1:
            problems.append(f"decoder_depths {self.decoder_depths}: one depth >= 1 per stage {self.stages}")
        if self.lowres_factor < 0 or (self.lowres_factor and self.patch_size % self.lowres_factor):
            problems.append(f"lowres_factor {self.lowres_factor} must divide patch_size {self.patch_size}")
        if self.cascade_link not in LINKS:
            problems.append(f"cascade_link {self.cascade_link!r}: choose {' or '.join(LINKS)}")
        if self.instance_target not in INSTANCE_TARGETS:
            problems.append(f"instance_target {self.instance_target!r}: choose {' or '.join(INSTANCE_TARGETS)}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ModelConfig:
        d = dict(d)  # fields a checkpoint predates: checkpoint.config_from adds ABSENT's values
        for k in ("stages", "loss_weights", "decoder_depths"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# --- pure helpers ---------------------------------------------------------------------------


def sincos_pos_embed(dim: int, grid: int, cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE): [grid*grid (+1), dim]."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    emb = np.concatenate([one_d(dim // 2, gh), one_d(dim // 2, gw)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """imgs: [N, C, H, W] -> [N, L, p*p*C] (row, column, channel order, as MAE)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # n h w p q c
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """[N, L, p*p*C] -> [N, C, H, W]."""
    n, length, _ = x.shape
    g = int(length**0.5)
    x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # n c h p w q
    return x.reshape(n, c, g * p, g * p)


def cellify(maps: torch.Tensor, cells_per_patch: int) -> torch.Tensor:
    """Per-cell maps [N, K, Hc, Wc] -> per-patch [N, L, cells_per_patch^2 * K] (patchify on cells)."""
    return patchify(maps, cells_per_patch)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: [N, L, D], ids: [N, K] -> [N, K, D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def mask_to_ids(mask: torch.Tensor, keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mask [N, L] (exactly the same count of zeros per row) -> (ids_keep [N, K], ids_restore [N, L]).

    Kept patches come first in their original order; ids_restore undoes the shuffle (MAE).
    `keep` (K) is known to whoever made the mask; without it, it is read from the mask, which
    costs a device -> host sync."""
    ids_shuffle = torch.argsort(mask.float() + torch.linspace(0, 0.5, mask.shape[1], device=mask.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    if keep is None:
        keep = int((mask[0] == 0).sum())
    return ids_shuffle[:, :keep], ids_restore


def path_depths(cfg: ModelConfig) -> tuple[int, ...]:
    """Decoder blocks on the longest path from the encoder to each stage's head: cascaded, a stage
    sees every block before it (2 + 2 + 4 -> 2, 4, 8); parallel, its own. A fair parallel arm gives
    each head the cascade's path depth (`--decoder-depths 2,4,8`)."""
    return tuple(itertools.accumulate(cfg.decoder_depths)) if cfg.cascade else tuple(cfg.decoder_depths)


@functools.lru_cache(maxsize=16)
def rfft_pair_weights(width: int, device) -> torch.Tensor:
    """[width // 2 + 1]: how many components of the full 2-D spectrum each rfft2 column stands for
    (2: a conjugate pair; 1: the first column and, at even widths, the last). Made once per device."""
    weight = [2.0] * (width // 2 + 1)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return torch.tensor(weight, device=device)


def split_depth(total: int, stages: int) -> tuple[int, ...]:
    """Decoder blocks per stage for `total` blocks in all: a quarter (at least one) for each coarse
    stage, the rest for the last (pixel) stage: 8 over 3 stages -> (2, 2, 4), 4 -> (1, 1, 2).
    Cascaded, the pixel predictions pass through all `total` blocks, as through MAE's decoder."""
    if total < stages:
        raise ValueError(f"decoder depth {total} is less than the {stages} stages")
    coarse = max(1, total // 4)
    head = [coarse] * (stages - 1)
    if sum(head) >= total:
        head = [1] * (stages - 1)
    return (*head, total - sum(head))


# --- modules --------------------------------------------------------------------------------


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float, eps: float) -> nn.ModuleList:
    from timm.models.vision_transformer import Block

    norm = functools.partial(nn.LayerNorm, eps=eps)
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth))


class MapEmbed(nn.Module):
    """Visible patches' semantic / instance maps -> tokens (the multi-modal input, MultiMAE-style).

    Semantic: per-patch class histogram over cells -> linear. Instance: per-patch instance target
    channels over cells -> linear."""

    def __init__(self, num_classes: int, cells: int, dim: int, channels: int):
        super().__init__()
        self.num_classes = num_classes
        self.sem = nn.Linear(num_classes + 1, dim)
        self.inst = nn.Linear(cells * cells * channels, dim)
        self.modality = nn.Parameter(torch.zeros(2, dim))

    def forward(self, sem: torch.Tensor, inst: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = sem.clamp(max=self.num_classes)  # ignore -> the extra bin
        onehot = F.one_hot(s, self.num_classes + 1).permute(0, 3, 1, 2).float()  # [N, C+1, Hc, Wc]
        hist = cellify(onehot, cells).reshape(s.shape[0], -1, cells * cells, self.num_classes + 1).mean(2)
        return self.sem(hist) + self.modality[0], self.inst(cellify(inst, cells)) + self.modality[1]


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention from `x` (queries) to `context` (keys, values); no residual."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim, eps=eps)
        self.norm_context = nn.LayerNorm(dim, eps=eps)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [N, Lq, D], context: [N, Lk, D] -> [N, Lq, D]."""
        n, lq, d = x.shape
        h = self.heads
        q = self.q(self.norm_x(x)).reshape(n, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_context(context)).reshape(n, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # fused kernels on GPU
        return self.proj(out.transpose(1, 2).reshape(n, lq, d))


class DecoderStage(nn.Module):
    """An optional link to the previous stage, transformer blocks over the full patch sequence,
    then a linear head per patch.

    Links (`cascade_link`): `add` puts a linear projection of the previous stage's features at
    every position (concatenation + linear, folded into one projection); `xattn` lets every token
    attend to all of the previous stage's tokens (one cross-attention layer before the blocks)."""

    def __init__(self, dim, depth, heads, mlp_ratio, out_dim, link: str | None, eps: float):
        super().__init__()
        self.link_kind = link
        self.link = (
            nn.Linear(dim, dim) if link == "add" else CrossAttention(dim, heads, eps) if link == "xattn" else None
        )
        self.blocks = _blocks(dim, depth, heads, mlp_ratio, eps)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, 1+L, Dd] tokens (cls first); prev: [N, 1+L, Dd] or None -> (features, predictions [N, L, out])."""
        if self.link is not None and prev is not None:
            x = x + (self.link(prev) if self.link_kind == "add" else self.link(x, prev))
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x, self.head(x[:, 1:])


class Teacher(nn.Module):
    """FOLK's teacher: an exponential moving average of the student's encoder, never trained by
    gradients. It sees the original image, whole; its normalised tokens are the student's targets."""

    PARTS = ("patch_embed", "cls_token", "blocks", "norm")  # the student's encoder

    def __init__(self, student: C2FMAE):
        super().__init__()
        for name in self.PARTS:
            setattr(self, name, copy.deepcopy(getattr(student, name)))
        self.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: C2FMAE, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter."""
        names, params = zip(*self.named_parameters(), strict=True)
        torch._foreach_lerp_(list(params), [student.get_parameter(n) for n in names], 1.0 - momentum)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """imgs [N, 3, H, W] -> layer-normalised tokens [N, 1+L, D] (CLS first)."""
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return F.layer_norm(x, x.shape[-1:])  # scale-free targets: the student cannot win by shrinking them


class C2FMAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        p, d, eps = cfg.patch_size, cfg.embed_dim, cfg.norm_eps
        self.grid = cfg.img_size // p
        self.cells = p // cfg.cell_size  # cells per patch side
        num_patches = self.grid**2
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        low = p // cfg.lowres_factor if cfg.lowres_factor else 0
        self.lowres_embed = nn.Conv2d(3, d, kernel_size=low, stride=low) if low else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_pos_embed(d, self.grid, True).unsqueeze(0), persistent=False)
        self.inst_channels = len(INSTANCE_TARGETS[cfg.instance_target])
        self.map_embed = MapEmbed(cfg.num_classes, self.cells, d, self.inst_channels) if cfg.multimodal_input else None
        self.blocks = _blocks(d, cfg.depth, cfg.num_heads, cfg.mlp_ratio, eps)
        self.norm = nn.LayerNorm(d, eps=eps)

        dd = cfg.decoder_dim
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(dd, self.grid, True).unsqueeze(0), persistent=False)
        out_dims = {
            "semantic": self.cells**2 * cfg.num_classes,
            "instance": self.cells**2 * self.inst_channels,
            "pixel": p * p * 3,
        }
        self.stages = nn.ModuleDict(
            {
                name: DecoderStage(
                    dd,
                    cfg.decoder_depths[k],
                    cfg.decoder_heads,
                    cfg.decoder_mlp_ratio,
                    out_dims[name],
                    link=cfg.cascade_link if cfg.cascade and k > 0 else None,
                    eps=eps,
                )
                for k, name in enumerate(cfg.stages)
            }
        )
        self.num_patches = num_patches
        hidden = cfg.projector_hidden or 4 * d
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) if cfg.distill else None
        self._init_weights()
        self.teacher = Teacher(self) if cfg.distill else None  # starts as the student (BYOL, DINO)

    def _init_weights(self):
        for embed in (self.patch_embed, self.lowres_embed):
            if embed is not None:
                w = embed.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- the algorithm -----------------------------------------------------------------------

    def embed_patches(self, imgs, lowres=None):
        """imgs [N, 3, H, W] -> patch tokens [N, L, D]; where lowres [N, L] is 1 (SRMAE), the token
        embeds the patch downsampled by `lowres_factor` (area average), through its own embedding."""
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2)
        if lowres is not None and self.lowres_embed is not None:
            small = self.lowres_embed(F.avg_pool2d(imgs, self.cfg.lowres_factor)).flatten(2).transpose(1, 2)
            x = torch.where(lowres.bool().unsqueeze(-1), small, x)
        return x

    def forward_encoder(self, imgs, mask, sem=None, inst=None, keep: int | None = None, lowres=None):
        """imgs [N, 3, H, W], mask [N, L] -> (latent [N, 1+K(+2K), D], ids_restore [N, L])."""
        x = self.embed_patches(imgs, lowres) + self.pos_embed[:, 1:]
        ids_keep, ids_restore = mask_to_ids(mask, keep)
        tokens = [gather_tokens(x, ids_keep)]
        if self.map_embed is not None:
            s_tok, i_tok = self.map_embed(sem, inst, self.cells)
            pos = self.pos_embed[:, 1:]
            tokens += [gather_tokens(s_tok + pos, ids_keep), gather_tokens(i_tok + pos, ids_keep)]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, *tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), ids_restore

    def forward_decoder(self, latent, ids_restore):
        """latent -> {stage: predictions [N, L, out]}; stages run coarse to fine, each conditioned on the last."""
        x = self.decoder_embed(latent)
        keep = (latent.shape[1] - 1) // (3 if self.map_embed is not None else 1)
        visible = x[:, 1 : 1 + keep]  # RGB tokens of the visible patches (map tokens only inform the encoder)
        masked = self.mask_token.expand(x.shape[0], ids_restore.shape[1] - keep, -1)
        full = gather_tokens(torch.cat([visible, masked], dim=1), ids_restore)  # unshuffle
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        preds, prev = {}, None
        for name, stage in self.stages.items():
            prev, preds[name] = stage(x, prev)
        return preds

    def targets(self, imgs, sem, inst):
        """Per-patch targets: pixel [N, L, p*p*3], semantic [N, L, cells^2], instance [N, L, cells^2*4]."""
        t = {}
        if "pixel" in self.cfg.stages:
            t["pixel"] = patchify(imgs, self.cfg.patch_size)
        if "semantic" in self.cfg.stages:
            t["semantic"] = cellify(sem.unsqueeze(1), self.cells)
        if "instance" in self.cfg.stages:
            t["instance"] = cellify(inst, self.cells)
        return t

    def forward_loss(self, preds, targets, mask, per_patch: bool = False):
        """Each term averaged over removed patches only (mask == 1); the semantic term over their
        labelled cells (none labelled: 0, not NaN). With `per_patch`, also returns each stage's
        loss at every patch, kept ones included ({stage: [N, L]}), for loss caches and selective
        masking: (losses, per_patch_losses)."""
        m = mask.float()
        removed = m.sum().clamp_min(1)
        losses, patch = {}, {}
        if "pixel" in preds:
            target = targets["pixel"]
            if self.cfg.norm_pix_loss:
                mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
                target = (target - mean) / (var + 1.0e-6) ** 0.5
            patch["pixel"] = ((preds["pixel"] - target) ** 2).mean(-1)
            losses["pixel"] = (patch["pixel"] * m).sum() / removed
        if "semantic" in preds:
            n, length, _ = preds["semantic"].shape
            logits = preds["semantic"].reshape(-1, self.cfg.num_classes)
            tgt = targets["semantic"]  # [N, L, cells^2]
            ce = F.cross_entropy(logits, tgt.reshape(-1), ignore_index=self.cfg.ignore_index, reduction="none")
            ce, labelled = ce.reshape(tgt.shape).sum(-1), (tgt != self.cfg.ignore_index).sum(-1)
            patch["semantic"] = ce / labelled.clamp_min(1)
            losses["semantic"] = (ce * m).sum() / (labelled * m).sum().clamp_min(1)
        if "instance" in preds:
            patch["instance"] = self.instance_loss(preds["instance"], targets["instance"])
            losses["instance"] = (patch["instance"] * m).sum() / removed
        weights = dict(zip(STAGES, self.cfg.loss_weights, strict=True))
        losses["total"] = sum(weights[k] * v for k, v in losses.items())
        return (losses, patch) if per_patch else losses

    def instance_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[N, L, cells^2 * K] logits / targets -> [N, L] loss per patch, averaged over its cells and
        channels. Local: binary cross-entropy of the four bits. Centre: binary cross-entropy of
        foreground, boundary and the heatmap, less the targets' own entropy (the heatmap's targets
        are soft: so every term is 0 for an exact prediction; the gradient is the cross-entropy's),
        and on foreground cells the L1 error of the offsets at Panoptic-DeepLab's 0.01 per pixel."""
        if self.cfg.instance_target == "local":
            return F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(-1)
        n, length, _ = pred.shape
        p, t = pred.reshape(n, length, -1, 5), target.reshape(n, length, -1, 5)
        soft = t[..., :3]
        entropy = -(torch.xlogy(soft, soft) + torch.xlogy(1 - soft, 1 - soft))
        bce = F.binary_cross_entropy_with_logits(p[..., :3], soft, reduction="none") - entropy
        l1 = (p[..., 3:] - t[..., 3:]).abs() * t[..., :1] * (OFFSET_WEIGHT * self.cfg.patch_size)
        return torch.cat([bce, l1], -1).mean((-1, -2))

    def distill_loss(self, latent, imgs, views: int = 1):
        """FOLK's self-distillation, mean squared error from the student's projector to the teacher's
        normalised tokens. One view: every token of the filtered view regresses the teacher's token
        of the same (original) crop. Two views (the batch holds all first views, then all second
        views): each view's CLS token regresses the teacher's CLS of the other view's original (the
        crops differ, so only the image-level token has a counterpart)."""
        assert self.teacher is not None and self.projector is not None
        target = self.teacher(imgs, self.pos_embed)
        if views == 1:
            return F.mse_loss(self.projector(latent[:, : target.shape[1]]).float(), target.float())
        other = target[:, 0].roll(target.shape[0] // views, 0)  # row i <- the other view of image i
        return F.mse_loss(self.projector(latent[:, 0]).float(), other.float())

    def frequency_loss(self, pred, imgs, removed):
        """FOLK's loss on the removed frequencies: the reconstruction (each patch's prediction put
        back at the target patch's mean and scale, as the pictures show it) against the image, in
        the Fourier components the view removed (`removed` [N, 1, H, W//2+1]), relative to the
        image's energy outside the mean: 0 for an exact reconstruction, the fraction of the energy
        the view lost for one that restores none of it. (Relative to the removed energy alone, a
        Com view that lost 0.5% would turn any small error into a huge loss.)"""
        p = self.cfg.patch_size
        if self.cfg.norm_pix_loss:
            t = patchify(imgs, p)
            pred = pred * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
        weight = rfft_pair_weights(imgs.shape[-1], imgs.device)
        error = torch.fft.rfft2((unpatchify(pred, p) - imgs).float()).abs().pow(2) * weight
        energy = torch.fft.rfft2(imgs.float()).abs().pow(2) * weight
        num = (error * removed).sum((1, 2, 3))
        den = energy.sum((1, 2, 3)) - energy[..., 0, 0].sum(1)  # all but the mean (DC) of each channel
        return (num / den.clamp_min(1e-6)).mean()

    def forward(
        self,
        imgs,
        mask,
        sem=None,
        inst=None,
        keep: int | None = None,
        *,
        view=None,
        lowres=None,
        loss_on=None,
        views: int = 1,
        removed=None,
    ):
        """-> (losses {stage: scalar, "total": scalar}, predictions {stage: [N, L, out]}).

        imgs are the targets; the encoder sees `view` instead where given (FOLK: the image with
        Fourier components removed), minus the `mask`ed patches, with `lowres` patches downsampled
        (SRMAE). Losses count where `loss_on` [N, L] is 1 (default: the masked patches). FOLK:
        `views` crops per image stacked in the batch (the distillation pairs them), `removed` the
        components each view lost (the frequency loss, where `freq_weight` > 0).
        `keep`: patches kept per image, when the caller knows it (saves a device -> host sync)."""
        latent, ids_restore = self.forward_encoder(imgs if view is None else view, mask, sem, inst, keep, lowres)
        preds = self.forward_decoder(latent, ids_restore)
        losses = self.forward_loss(preds, self.targets(imgs, sem, inst), mask if loss_on is None else loss_on)
        if self.teacher is not None:
            losses["distill"] = self.distill_loss(latent, imgs, views)
            losses["total"] = losses["total"] + self.cfg.distill_weight * losses["distill"]
        if removed is not None and self.cfg.freq_weight > 0 and "pixel" in preds:
            losses["freq"] = self.frequency_loss(preds["pixel"], imgs, removed)
            losses["total"] = losses["total"] + self.cfg.freq_weight * losses["freq"]
        return losses, preds

    def features(self, imgs, pool: str = "mean"):
        """Frozen features for probes, nothing masked: [N, D]. `pool`: "cls" (the CLS token, MAE's
        linear probe) or "mean" (mean of the patch tokens)."""
        mask = torch.zeros(imgs.shape[0], self.num_patches, device=imgs.device)
        latent, _ = self.forward_encoder(imgs, mask, *self._blank_maps(imgs), keep=self.num_patches)
        if pool == "cls":
            return latent[:, 0]
        return latent[:, 1 : 1 + self.num_patches].mean(1)

    def _blank_maps(self, imgs):
        if self.map_embed is None:
            return None, None
        n, hc = imgs.shape[0], imgs.shape[-1] // self.cfg.cell_size
        return (
            torch.full((n, hc, hc), self.cfg.ignore_index, dtype=torch.long, device=imgs.device),
            torch.zeros(n, self.inst_channels, hc, hc, device=imgs.device),
        )


# --- named builders (MAE's registry style) -------------------------------------------------------

# Encoders are MAE's / ViT's. Decoders: MAE's 512 wide x 8 blocks x 16 heads from base up (MAE's
# published decoder); half as wide and deep for tiny and small, where that decoder would cost
# several times the encoder; 64 x 3 for micro (tests). `decoder_depth` is the total over all
# stages (split_depth): the cascade and MAE mode get the same decoder blocks, docs/TRAINER.md.
MODELS: dict[str, dict] = {
    "c2fmae_vit_micro": dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=64, decoder_depth=3, decoder_heads=2),
    "c2fmae_vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_dim=256, decoder_depth=4, decoder_heads=8),
    "c2fmae_vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=256, decoder_depth=4, decoder_heads=8),
    "c2fmae_vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_dim=512, decoder_depth=8, decoder_heads=16),
    "c2fmae_vit_large": dict(
        embed_dim=1024, depth=24, num_heads=16, decoder_dim=512, decoder_depth=8, decoder_heads=16
    ),
    "c2fmae_vit_huge": dict(  # MAE's ViT-H/14
        embed_dim=1280, depth=32, num_heads=16, patch_size=14, decoder_dim=512, decoder_depth=8, decoder_heads=16
    ),
}


def default_cell_size(patch_size: int) -> int:
    """4-pixel cells (16 per patch) at patch 16; 7-pixel cells (2x2 per patch) at patch 14."""
    return next((c for c in (4, 7, 2) if patch_size % c == 0), patch_size)


def model_config(name: str, decoder_depth: int | None = None, **overrides) -> ModelConfig:
    """The named size with `overrides` (ModelConfig fields). `decoder_depth` is the total number
    of decoder blocks, split over the stages by `split_depth` unless `decoder_depths` is given."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    base = dict(MODELS[name])
    total = decoder_depth or base.pop("decoder_depth")
    base.pop("decoder_depth", None)
    fields = {**base, **overrides}
    stages = tuple(fields.get("stages", STAGES))
    fields.setdefault("decoder_depths", split_depth(total, len(stages)))
    fields.setdefault("cell_size", default_cell_size(fields.get("patch_size", 16)))
    return ModelConfig(**fields)
