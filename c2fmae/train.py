"""`c2f pretrain SHARDS --output DIR` or `torchrun --nproc-per-node N -m c2f pretrain SHARDS --output DIR`.

Wiring only: config -> data (c2fmae.data) -> model (c2fmae.model) -> loop (c2fmae.engine) ->
logs, pictures, checkpoints. The config is saved in every checkpoint and rebuilt from it on
`--resume`, so a resumed run continues exactly where it stopped (same data order, masks and LR).
"""

from __future__ import annotations

import dataclasses
import json
import os
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


def make_schedule(cfg: TrainConfig, num_samples: int, world: int):
    """The run's length and learning rate, derived once from the config and the dataset size."""
    from .engine import Schedule

    global_batch = cfg.batch_size * cfg.accum_steps * world
    spe = cfg.steps_per_epoch or max(1, num_samples // global_batch)
    total = cfg.steps or cfg.epochs * spe
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(1, total // 20)
    return Schedule(total, warmup, cfg.blr * global_batch / 256, cfg.min_lr, spe)


def make_loop(cfg: TrainConfig, schedule, ignore_index: int):
    from .engine import Loop
    from .masking import Curriculum

    return Loop(
        schedule,
        masking=cfg.masking,
        mask_ratio=cfg.mask_ratio,
        curriculum=Curriculum(_floats(cfg.curriculum_centers), cfg.curriculum_width),
        ignore_index=ignore_index,
        accum_steps=cfg.accum_steps,
        grad_clip=cfg.grad_clip,
        bf16=cfg.bf16,
    )


@dataclass(frozen=True)
class Dist:
    """This process's place in the run (torchrun's environment)."""

    rank: int
    world: int
    local: int
    device: Any  # torch.device


def init_distributed() -> Dist:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, world, local, device)


def run(cfg: TrainConfig) -> int:
    import torch
    import torch.distributed as dist

    from shards.errors import UsageError

    from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
    from .data import read_spec
    from .engine import param_groups, train_steps

    out = Path(cfg.output)
    ckpt, state = out / CHECKPOINT, None
    if cfg.resume:
        state = load_checkpoint(ckpt)
        cfg = resumed_config(cfg, state, ckpt)
    try:
        spec = read_spec(cfg.shards)
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise UsageError(str(e)) from None

    env = init_distributed()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec).to(env.device)
    schedule = make_schedule(cfg, spec.num_samples, env.world)
    loop = make_loop(cfg, schedule, model.cfg.ignore_index)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=schedule.peak_lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(cfg.seed * 7 + env.rank)  # masks
    start = restore(ckpt, state, model, optimizer, generator, env.rank) if state is not None else 0
    # `model` stays the plain module (state dicts, config, pictures); `train_model` is what steps.
    train_model = torch.compile(model) if cfg.compile else model
    if env.world > 1:
        ids = [env.local] if env.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(train_model, device_ids=ids)
    end = min(schedule.total_steps, start + cfg.stop_after) if cfg.stop_after else schedule.total_steps
    log = RunLog(out, cfg, env, schedule, start) if env.rank == 0 else None
    if log:
        print(banner(cfg, model, env, schedule, start))

    for epoch, first, stop in epochs(start, end, schedule.steps_per_epoch):
        batches = epoch_batches(cfg, model.cfg, epoch, skip=(first % schedule.steps_per_epoch) * cfg.accum_steps)
        for step_out in train_steps(train_model, optimizer, batches, range(first, stop), loop, generator):
            if log:
                log.step(step_out, model.cfg)
            if (step_out.step + 1) % cfg.ckpt_every == 0 or step_out.step == end - 1:
                snapshot = checkpoint_state(model, optimizer, step_out.step + 1, cfg, generator, env.world)
                if env.rank == 0:
                    save_checkpoint(ckpt, snapshot)
    if log:
        log.close()
    if env.world > 1:
        dist.destroy_process_group()
    return 0


def epochs(start: int, end: int, steps_per_epoch: int):
    """(epoch, first step, stop step) of each epoch that [start, end) touches."""
    epoch = start // steps_per_epoch
    while start < end:
        stop = min(end, (epoch + 1) * steps_per_epoch)
        yield epoch, start, stop
        start, epoch = stop, epoch + 1


def epoch_batches(cfg: TrainConfig, mcfg, epoch: int, skip: int):
    """The epoch's batch stream (a function of seed, epoch, rank and worker count), `skip` batches in:
    a mid-epoch resume replays the epoch's data order up to its step."""
    from .data import make_loader

    loader = make_loader(
        cfg.shards,
        cfg.batch_size,
        cfg.workers,
        cfg.seed,
        epoch,
        mcfg.img_size,
        mcfg.patch_size,
        mcfg.cell_size,
        augment=cfg.augment,
    )
    batches = iter(loader)
    for _ in range(skip):
        next(batches)
    return batches


# --- logs -----------------------------------------------------------------------------------------


class RunLog:
    """Rank 0's record of the run: metrics.jsonl (every step), TensorBoard (when installed), console
    lines every `log_every` steps, and a picture of a reconstruction every `vis_every` steps."""

    def __init__(self, out: Path, cfg: TrainConfig, env: Dist, schedule, start: int):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.env, self.schedule = out, env, schedule
        keep_records_before(out / "metrics.jsonl", start)
        self.log_every, self.vis_every, self.masking = cfg.log_every, cfg.vis_every, cfg.masking
        self.curriculum = make_loop(cfg, schedule, 0).curriculum
        self.metrics = open(out / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self.tb = _tensorboard(out)

    def step(self, out, model_cfg) -> None:
        from .visualize import save_reconstruction

        last = out.step == self.schedule.total_steps - 1
        stats = step_stats(out, self.masking, self.curriculum, self.schedule)
        self.metrics.write(json.dumps(stats) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for k, v in stats.items():
                if isinstance(v, float):
                    self.tb.add_scalar(k, v, out.step)
        if out.step % self.log_every == 0 or last:
            losses = " ".join(f"{k[5:]} {v:.4f}" for k, v in stats.items() if k.startswith("loss_"))
            print(
                f"step {out.step:6d}  lr {out.lr:.2e}  {losses}  {stats['images_per_s'] * self.env.world:.1f} img/s"
                f"  mix {stats['masking']}",
                flush=True,
            )
        if self.vis_every and (out.step % self.vis_every == 0 or last):
            save_reconstruction(self.out / f"recon_{out.step:07d}.png", out.batch, out.mask, out.preds, model_cfg)

    def close(self) -> None:
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()


def keep_records_before(path: Path, step: int) -> None:
    """Drop the records of steps >= `step` (and any torn last line): a resumed run replays the steps
    after its checkpoint, and each step must appear once in metrics.jsonl."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def banner(cfg: TrainConfig, model, env: Dist, s, start: int) -> str:
    global_batch = cfg.batch_size * cfg.accum_steps * env.world
    return (
        f"c2fmae: {cfg.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{env.world} process(es), global batch {global_batch}, lr {s.peak_lr:.2e}, steps {start}->"
        f"{s.total_steps} ({s.steps_per_epoch}/epoch), masking {cfg.masking}, decoder {cfg.decoder}, "
        f"device {env.device}"
    )


def step_stats(out, masking: str, curriculum, schedule) -> dict[str, Any]:
    """One metrics.jsonl record."""
    probs = curriculum.probs(schedule.progress(out.step)) if masking == "curriculum" else None
    return {
        "step": out.step,
        "lr": out.lr,
        **{f"loss_{k}": v for k, v in out.losses.items()},
        "images_per_s": out.images / out.seconds,
        "masking": out.mix,
        "curriculum": dict(zip(("semantic", "instance", "random"), probs, strict=True)) if probs else None,
    }


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


# --- checkpoints (files: c2fmae/checkpoint.py) ---------------------------------------------------


def checkpoint_state(model, optimizer, step: int, cfg: TrainConfig, generator, world: int) -> dict[str, Any]:
    """What a checkpoint holds. Collective under DDP (every rank's mask RNG): call it on all ranks."""
    import torch
    import torch.distributed as dist

    rng = generator.get_state()
    if world > 1:  # every rank's mask RNG, so each continues its own sequence
        states = [torch.zeros_like(rng) for _ in range(world)]
        dist.all_gather_object(states, rng)
    else:
        states = [rng]
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": cfg.to_json(),
        "model_config": model.cfg.to_json(),
        "mask_rng": states,
        "torch_rng": torch.get_rng_state(),
    }


def resumed_config(cfg: TrainConfig, state: dict[str, Any], path: Path) -> TrainConfig:
    """The saved config wins (same model, schedule, data order); where the data lives, where to
    write, and when to leave are this invocation's."""
    from .checkpoint import config_from

    mine = {"resume": True, "output": cfg.output, "shards": cfg.shards, "stop_after": cfg.stop_after}
    return config_from(TrainConfig, {**state["config"], **mine}, path, "train config")


def restore(path: Path, state: dict[str, Any], model, optimizer, generator, rank: int) -> int:
    """Load a checkpoint into the run, after checking it is this run's; returns the step to continue from."""
    from shards.errors import DataError

    from .checkpoint import check_fits, config_from, load_weights
    from .model import ModelConfig

    check_fits(path, config_from(ModelConfig, state["model_config"], path, "model config"), model.cfg)
    load_weights(path, model, state["model"], "weights")
    load_weights(path, optimizer, state["optimizer"], "optimizer state")
    rngs = state.get("mask_rng") or []
    try:
        generator.set_state(rngs[rank] if rank < len(rngs) else rngs[0])
    except (IndexError, RuntimeError, TypeError) as e:
        raise DataError(f"{path}: its mask RNG state does not load: {e}") from None
    return int(state["step"])
