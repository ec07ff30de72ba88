"""`c2f pretrain SHARDS --output DIR` or `torchrun --nproc-per-node N -m c2f pretrain SHARDS --output DIR`.

Wiring only: config -> data (c2fmae.data) -> model (c2fmae.model) -> loop (c2fmae.engine) ->
logs, pictures, checkpoints. The config is saved in every checkpoint and rebuilt from it on
`--resume`, so a resumed run continues exactly where it stopped (same data order, masks and LR).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    shards: str = field(
        metadata={"positional": True, "help": "shard directory (with manifest.json), glob or brace pattern"}
    )
    output: str = field(
        default="out/pretrain", metadata={"help": "directory for checkpoints, metrics.jsonl and pictures"}
    )
    model: str = field(default="c2fmae_vit_tiny", metadata={"help": "c2fmae_vit_micro|tiny|small|base|large"})
    steps: int = field(default=0, metadata={"help": "optimizer steps in total (0: use --epochs)"})
    epochs: int = field(default=1, metadata={"help": "epochs of --steps-per-epoch steps, when --steps is 0"})
    steps_per_epoch: int = field(default=0, metadata={"help": "steps per epoch (0: dataset samples / global batch)"})
    batch_size: int = field(default=64, metadata={"help": "images per GPU per micro-batch"})
    accum_steps: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    blr: float = field(default=1.5e-4, metadata={"help": "base learning rate; lr = blr x global batch / 256 (MAE)"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the cosine schedule"})
    warmup_steps: int = field(default=-1, metadata={"help": "linear warmup steps (-1: 5% of the steps)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on norms, biases, tokens)"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the gradient norm (0: off)"})
    mask_ratio: float = field(default=0.75, metadata={"help": "fraction of patches removed"})
    masking: str = field(
        default="curriculum",
        metadata={
            "help": "curriculum|random|semantic|instance",
            "choices": ["curriculum", "random", "semantic", "instance"],
        },
    )
    curriculum_centers: str = field(
        default="0.0,0.5,1.0", metadata={"help": "training progress where semantic, instance, random peak"}
    )
    curriculum_width: float = field(
        default=0.25, metadata={"help": "width (std) of each curriculum phase, in progress units"}
    )
    decoder: str = field(
        default="cascaded", metadata={"help": "cascaded|parallel (the ablation)", "choices": ["cascaded", "parallel"]}
    )
    stages: str = field(default="semantic,instance,pixel", metadata={"help": "decoder stages, coarse to fine"})
    multimodal_input: bool = field(
        default=False, metadata={"help": "embed visible patches' masks as extra encoder tokens"}
    )
    loss_weights: str = field(default="1,1,1", metadata={"help": "weights of the semantic, instance, pixel losses"})
    augment: bool = field(
        default=True, metadata={"help": "RandomResizedCrop(0.2-1) + flip (off: whole image, for overfit checks)"}
    )
    workers: int = field(default=2, metadata={"help": "DataLoader workers per GPU"})
    seed: int = field(default=0, metadata={"help": "seed for weights, data order, augmentation and masks"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    log_every: int = field(default=10, metadata={"help": "print every N steps (metrics.jsonl gets every step)"})
    vis_every: int = field(
        default=100, metadata={"help": "write a PNG of inputs, masks and reconstructions every N steps (0: off)"}
    )
    ckpt_every: int = field(default=500, metadata={"help": "save a checkpoint every N steps (and at the end)"})
    resume: bool = field(default=False, metadata={"help": "continue from OUTPUT/checkpoint.pt with its saved config"})
    subset: str = field(
        default="", metadata={"help": "train only on these samples: a .json subset file written by `c2f filter`"}
    )
    stop_after: int = field(
        default=0,
        metadata={"help": "leave after this many steps in this process, with a checkpoint (0: run to the end)"},
    )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(","))


def build_model(cfg: TrainConfig, spec):
    from .model import C2FMAE, model_config

    mcfg = model_config(
        cfg.model,
        num_classes=max(1, spec.num_classes),
        ignore_index=spec.ignore_index,
        stages=tuple(cfg.stages.split(",")),
        cascade=cfg.decoder == "cascaded",
        multimodal_input=cfg.multimodal_input,
        loss_weights=_floats(cfg.loss_weights),
    )
    return C2FMAE(mcfg)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint under the name


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def run(cfg: TrainConfig) -> int:
    import torch
    import torch.distributed as dist

    from .data import make_loader, read_spec
    from .engine import param_groups, train_steps
    from .visualize import save_reconstruction

    out = Path(cfg.output)
    ckpt_path = out / "checkpoint.pt"
    state = None
    if cfg.resume:
        if not ckpt_path.exists():
            print(f"error: --resume but no checkpoint at {ckpt_path}", file=sys.stderr)
            return 2
        state = load_checkpoint(ckpt_path)
        # The saved config wins (same model, schedule, data order); where the data lives, where to
        # write, and when to leave are this invocation's.
        cfg = TrainConfig(
            **{
                **state["config"],
                "resume": True,
                "output": cfg.output,
                "shards": cfg.shards,
                "stop_after": cfg.stop_after,
            }
        )
    try:
        spec = read_spec(cfg.shards)
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec).to(device)
    global_batch = cfg.batch_size * cfg.accum_steps * world
    peak_lr = cfg.blr * global_batch / 256
    spe = cfg.steps_per_epoch or max(1, spec.num_samples // global_batch)
    total = cfg.steps or cfg.epochs * spe
    if cfg.warmup_steps < 0:
        cfg.warmup_steps = max(1, total // 20)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak_lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(cfg.seed * 7 + rank)  # masks
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["mask_rng"][rank] if rank < len(state["mask_rng"]) else state["mask_rng"][0])
        start = state["step"]
    # `model` stays the plain module (state dicts, config, pictures); `train_model` is what steps.
    train_model = torch.compile(model) if cfg.compile else model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[local] if device.type == "cuda" else None
        )

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"c2fmae: {cfg.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
            f"{world} process(es), global batch {global_batch}, lr {peak_lr:.2e}, steps {start}->{total} "
            f"({spe}/epoch), masking {cfg.masking}, decoder {cfg.decoder}, device {device}"
        )
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None  # noqa: SIM115
    tb = _tensorboard(out) if rank == 0 else None

    end = min(total, start + cfg.stop_after) if cfg.stop_after else total

    def on_step(step, stats, batch, mask, preds):
        checkpoint = (step + 1) % cfg.ckpt_every == 0 or step == end - 1
        state = _state(model, optimizer, step + 1, cfg, generator, world) if checkpoint else None  # all ranks
        if rank != 0:
            return
        metrics.write(json.dumps(stats) + "\n")
        metrics.flush()
        if tb is not None:
            for k, v in stats.items():
                if isinstance(v, float):
                    tb.add_scalar(k, v, step)
        if step % cfg.log_every == 0 or step == total - 1:
            losses = " ".join(f"{k[5:]} {v:.4f}" for k, v in stats.items() if k.startswith("loss_"))
            print(
                f"step {step:6d}  lr {stats['lr']:.2e}  {losses}  {stats['images_per_s'] * world:.1f} img/s"
                f"  mix {stats['masking']}",
                flush=True,
            )
        if cfg.vis_every and (step % cfg.vis_every == 0 or step == total - 1):
            save_reconstruction(out / f"recon_{step:07d}.png", batch, mask, preds, model.cfg)
        if state is not None:
            save_checkpoint(ckpt_path, state)

    epoch = start // spe
    while start < end:
        loader = make_loader(
            cfg.shards,
            cfg.batch_size,
            cfg.workers,
            cfg.seed,
            epoch,
            model.cfg.img_size,
            model.cfg.patch_size,
            model.cfg.cell_size,
            augment=cfg.augment,
            subset=cfg.subset or None,
        )
        batches = iter(loader)
        for _ in range((start % spe) * cfg.accum_steps):  # resume mid-epoch: replay the epoch's data order
            next(batches)
        stop = min(end, (epoch + 1) * spe)
        train_steps(
            train_model, model.cfg, optimizer, batches, start, stop, cfg, peak_lr, total, generator, device, on_step
        )
        start, epoch = stop, epoch + 1
        del batches, loader
    if metrics:
        metrics.close()
    if world > 1:
        dist.destroy_process_group()
    return 0


def _state(model, optimizer, step, cfg, generator, world) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    rng = generator.get_state()
    if world > 1:  # every rank's mask RNG, so each continues its own sequence
        states = [torch.zeros_like(rng) for _ in range(world)]
        dist.all_gather_object(states, rng)
    else:
        states = [rng]
    cfg_json = cfg.to_json()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": cfg_json,
        "model_config": model.cfg.to_json(),
        "mask_rng": states,
        "torch_rng": torch.get_rng_state(),
    }


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))
