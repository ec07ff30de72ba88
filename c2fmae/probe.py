"""`c2f probe SHARDS --checkpoint CKPT`: kNN and linear probes on frozen encoder features.

Uses each sample's `.cls` label. Samples are split into train / validation by a hash of their
key (80 / 20, stable across runs and checkpoints), features are the mean of the encoder's patch
tokens on the whole image (no masking, no augmentation beyond the resize to the model's size).
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProbeConfig:
    shards: str = field(metadata={"positional": True, "help": "shard directory (with manifest.json)"})
    checkpoint: str = field(
        default="", metadata={"help": "checkpoint.pt written by `c2f pretrain` (empty: a random-init baseline)"}
    )
    model: str = field(default="c2fmae_vit_tiny", metadata={"help": "model name when --checkpoint is empty"})
    k: int = field(default=10, metadata={"help": "neighbours for the kNN probe"})
    linear_epochs: int = field(default=100, metadata={"help": "full-batch epochs of the linear probe"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    max_samples: int = field(default=20000, metadata={"help": "use at most this many samples"})
    json: bool = field(default=False, metadata={"help": "print the result as JSON"})


def extract(model, source: str, batch_size: int, max_samples: int, device):
    import torch

    from shards.reader import JointTransform, make_dataset

    from .data import MEAN, STD

    tf = JointTransform(model.cfg.img_size, scale=(1.0, 1.0), ratio=(1e-3, 1e3), flip=False)  # the whole image
    feats, labels, split = [], [], []
    batch: list = []

    def flush():
        x = (torch.stack(batch).float() - MEAN) / STD
        with torch.inference_mode():
            feats.append(model.features(x.to(device)).float().cpu())
        batch.clear()

    for n, s in enumerate(make_dataset(source, transform=tf, shuffle=0)):
        if n >= max_samples:
            break
        batch.append(s["image"])
        labels.append(s["cls"])
        split.append(zlib.crc32(s["__key__"].encode()) % 5 != 0)  # True: train
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
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

    from shards.errors import UsageError

    from .checkpoint import config_from, load_checkpoint, load_weights
    from .data import read_spec
    from .model import C2FMAE, ModelConfig, model_config

    torch.manual_seed(0)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        state = load_checkpoint(path)
        model = C2FMAE(config_from(ModelConfig, state["model_config"], path, "model config"))
        load_weights(path, model, state["model"], "weights")
    else:
        try:
            spec = read_spec(cfg.shards)
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(str(e)) from None
        model = C2FMAE(model_config(cfg.model, num_classes=max(1, spec.num_classes), ignore_index=spec.ignore_index))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    x, y, train = extract(model, cfg.shards, cfg.batch_size, cfg.max_samples, device)
    if (y < 0).any():
        print("error: these shards have no image-level classes (.cls); nothing to probe", file=sys.stderr)
        return 2
    if train.all() or (~train).all():
        print("error: too few samples for a train/validation split", file=sys.stderr)
        return 2
    result = {
        "checkpoint": cfg.checkpoint or f"random init ({cfg.model})",
        "samples": {"train": int(train.sum()), "val": int((~train).sum())},
        "knn_top1": knn_accuracy(x[train], y[train], x[~train], y[~train], cfg.k),
        "linear_top1": linear_accuracy(x[train], y[train], x[~train], y[~train], cfg.linear_epochs),
    }
    if cfg.json:
        print(json.dumps(result))
    else:
        print(
            f"probe {result['checkpoint']}: {result['samples']['train']} train / {result['samples']['val']} val, "
            f"kNN(k={cfg.k}) top-1 {100 * result['knn_top1']:.1f}%, linear top-1 {100 * result['linear_top1']:.1f}%"
        )
    return 0
