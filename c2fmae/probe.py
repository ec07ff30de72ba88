"""`c2f probe SHARDS --checkpoint CKPT`: kNN and linear probes on frozen encoder features.

Uses each sample's `.cls` label. Samples are drawn from every shard and stratified by class
(`stratified`: a few per shard, at most max_samples / classes per class), read without their
masks, and split into train / validation by a hash of their key (80 / 20, stable across runs
and checkpoints). Images are resized (shorter side 256/224 of the model's size, bicubic) and
centre-cropped, as MAE evaluates; features are the CLS token (MAE's linear probe) or the mean of
the patch tokens (`--pool`), nothing masked.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProbeConfig:
    shards: str = field(metadata={"positional": True, "help": "shard directory (with manifest.json)"})
    checkpoint: str = field(
        default="", metadata={"help": "checkpoint.pt written by `c2f pretrain` (empty: a random-init baseline)"}
    )
    model: str = field(default="c2fmae_vit_tiny", metadata={"help": "model name when --checkpoint is empty"})
    pool: str = field(
        default="cls",
        metadata={
            "help": "features: cls (the CLS token, MAE's linear probe) or mean (patch tokens)",
            "choices": ["cls", "mean"],
        },
    )
    k: int = field(default=10, metadata={"help": "neighbours for the kNN probe"})
    linear_epochs: int = field(default=100, metadata={"help": "full-batch epochs of the linear probe"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    max_samples: int = field(default=20000, metadata={"help": "use at most this many samples, from all shards"})
    json: bool = field(default=False, metadata={"help": "print the result as JSON"})


def stratified(urls: list[str], max_samples: int, num_classes: int):
    """Raw samples (image, class, metadata; no masks) from every shard in turn: at most
    ceil(max_samples / shards) from each, at most ceil(max_samples / classes) per class, so that
    shards written in class order and shards of mixed classes both give every class its share."""
    from shards import format as fmt
    from shards.reader import shard_samples

    per_shard = math.ceil(max_samples / max(1, len(urls)))
    per_class = math.ceil(max_samples / max(1, num_classes))
    counts: Counter = Counter()
    total = 0
    for url in urls:
        taken = 0
        samples = shard_samples(url, members=(fmt.JPG, fmt.CLS, fmt.META))
        try:
            for raw in samples:
                cls = int(raw[fmt.CLS]) if fmt.CLS in raw else -1
                if counts[cls] >= per_class:
                    continue
                yield raw
                counts[cls] += 1
                taken, total = taken + 1, total + 1
                if total >= max_samples:
                    return
                if taken >= per_shard:
                    break
        finally:
            samples.close()


def eval_view(image, size: int):
    """uint8 [3, H, W] -> [3, size, size]: shorter side to size * 256 / 224 (bicubic), centre crop (MAE)."""
    import torchvision.transforms.v2.functional as F

    resized = F.resize(image, [round(size * 256 / 224)], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(resized, [size, size])


def extract(model, urls: list[str], cfg: ProbeConfig, num_classes: int, device):
    """-> features [N, D], classes [N], train split [N] (bool)."""
    import torch

    from shards.reader import decode_sample

    from .data import normalize

    feats, labels, split = [], [], []
    batch: list = []

    def flush():
        x = normalize(torch.stack(batch).to(device))
        with torch.inference_mode():
            feats.append(model.features(x, cfg.pool).float().cpu())
        batch.clear()

    for raw in stratified(urls, cfg.max_samples, num_classes):
        s = decode_sample(raw, masks=False)
        batch.append(eval_view(s["image"], model.cfg.img_size))
        labels.append(s["cls"])
        split.append(zlib.crc32(s["__key__"].encode()) % 5 != 0)  # True: train
        if len(batch) == cfg.batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        return torch.zeros(0, model.cfg.embed_dim), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    return torch.cat(feats), torch.tensor(labels), torch.tensor(split)


def knn_accuracy(train_x, train_y, val_x, val_y, k: int) -> float:
    import torch
    import torch.nn.functional as F

    sims = F.normalize(val_x, dim=1) @ F.normalize(train_x, dim=1).T
    idx = sims.topk(min(k, train_x.shape[0]), dim=1).indices
    votes = train_y[idx]
    pred = torch.mode(votes, dim=1).values
    return float((pred == val_y).float().mean())


def linear_accuracy(train_x, train_y, val_x, val_y, epochs: int) -> float:
    import torch

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    tx, vx = (train_x - mean) / std, (val_x - mean) / std
    n_cls = int(max(train_y.max(), val_y.max())) + 1
    head = torch.nn.Linear(tx.shape[1], n_cls)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(head(tx), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head(vx).argmax(1) == val_y).float().mean())


def run(cfg: ProbeConfig) -> int:
    import torch

    from shards.errors import DataError, UsageError

    from .checkpoint import config_from, load_checkpoint, load_weights
    from .data import expand_urls, read_spec
    from .model import C2FMAE, ModelConfig, model_config

    torch.manual_seed(0)
    try:
        spec = read_spec(cfg.shards)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(str(e)) from None
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        state = load_checkpoint(path)
        model = C2FMAE(config_from(ModelConfig, state["model_config"], path, "model config"))
        load_weights(path, model, state["model"], "weights")
    else:
        model = C2FMAE(model_config(cfg.model, num_classes=max(1, spec.num_classes), ignore_index=spec.ignore_index))
    if spec.num_image_classes == 0:
        raise UsageError(f"{cfg.shards} has no image-level classes (.cls): nothing to probe")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    x, y, train = extract(model, expand_urls(cfg.shards), cfg, spec.num_image_classes, device)
    if (y < 0).any():
        raise DataError(f"{cfg.shards}: some samples have no .cls although the manifest lists classes")
    if train.all() or (~train).all():
        raise DataError(f"too few samples for a train/validation split ({len(y)} read)")
    result = {
        "checkpoint": cfg.checkpoint or f"random init ({cfg.model})",
        "pool": cfg.pool,
        "samples": {"train": int(train.sum()), "val": int((~train).sum())},
        "classes": len(set(y.tolist())),
        "knn_top1": knn_accuracy(x[train], y[train], x[~train], y[~train], cfg.k),
        "linear_top1": linear_accuracy(x[train], y[train], x[~train], y[~train], cfg.linear_epochs),
    }
    if cfg.json:
        print(json.dumps(result))
    else:
        print(
            f"probe {result['checkpoint']} ({cfg.pool} features): {result['samples']['train']} train / "
            f"{result['samples']['val']} val, {result['classes']} classes, kNN(k={cfg.k}) top-1 "
            f"{100 * result['knn_top1']:.1f}%, linear top-1 {100 * result['linear_top1']:.1f}%"
        )
    return 0
