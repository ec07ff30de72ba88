"""`c2f pretrain SHARDS --output DIR` or `torchrun --nproc-per-node N -m c2f pretrain SHARDS --output DIR`.

Wiring only: config -> data (c2fmae.data) -> model (c2fmae.model) -> loop (c2fmae.engine) ->
logs and pictures (c2fmae.logs), checkpoints (c2fmae.checkpoint). The config is saved in every
checkpoint and rebuilt from it on `--resume`, so a resumed run continues exactly where it
stopped (same data order, crops, masks and LR).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class TrainConfig:
    shards: str = field(
        metadata={"positional": True, "help": "shard directory (with manifest.json), glob or brace pattern"}
    )
    output: str = field(
        default="out/pretrain", metadata={"help": "directory for checkpoints, metrics.jsonl and pictures"}
    )
    # method
    method: str = field(
        default="c2fmae",
        metadata={
            "help": "mae|c2fmae|smir|folk|srmae: sets --stages, --masking and --mask-ratio where they are left "
            "empty (docs/TRAINER.md, Methods)",
            "choices": ["mae", "c2fmae", "smir", "folk", "srmae"],
        },
    )
    # model
    model: str = field(
        default="c2fmae_vit_tiny", metadata={"help": "c2fmae_vit_micro|tiny|small|base|large|huge (huge: patch 14)"}
    )
    img_size: int = field(default=0, metadata={"help": "training image side in pixels (0: the model's, 224)"})
    patch_size: int = field(default=0, metadata={"help": "ViT patch side in pixels (0: the model's)"})
    cell_size: int = field(
        default=0, metadata={"help": "semantic/instance target cell side in pixels (0: 4 at patch 16, 7 at patch 14)"}
    )
    decoder: str = field(
        default="cascaded", metadata={"help": "cascaded|parallel (the ablation)", "choices": ["cascaded", "parallel"]}
    )
    cascade_link: str = field(
        default="add",
        metadata={
            "help": "how a cascade stage sees the previous one: add (a projection at each position) or xattn "
            "(cross-attention to its tokens)",
            "choices": ["add", "xattn"],
        },
    )
    stages: str = field(default="", metadata={"help": "decoder stages, coarse to fine (empty: the method's)"})
    decoder_dim: int = field(default=0, metadata={"help": "decoder width (0: the model's, docs/TRAINER.md)"})
    decoder_depth: int = field(
        default=0, metadata={"help": "decoder blocks over all stages (0: the model's; 8 from base up, as MAE)"}
    )
    decoder_depths: str = field(
        default="",
        metadata={
            "help": "blocks per stage, coarse to fine, e.g. 2,2,4 (empty: --decoder-depth split, a quarter "
            "per coarse stage); 2,4,8 with --decoder parallel: every head as deep as its cascaded path"
        },
    )
    decoder_heads: int = field(default=0, metadata={"help": "decoder attention heads (0: the model's)"})
    decoder_mlp_ratio: float = field(default=4.0, metadata={"help": "decoder MLP width / decoder width"})
    multimodal_input: bool = field(
        default=False, metadata={"help": "embed visible patches' masks as extra encoder tokens"}
    )
    loss_weights: str = field(default="1,1,1", metadata={"help": "weights of the semantic, instance, pixel losses"})
    instance_target: str = field(
        default="centre",
        metadata={
            "help": "the instance stage's target: centre (heatmap + each cell's offset to its instance's centre, "
            "Panoptic-DeepLab's) or local (foreground, boundary, right/down affinities)",
            "choices": ["centre", "local"],
        },
    )
    # schedule
    steps: int = field(default=0, metadata={"help": "optimizer steps in total (0: use --epochs)"})
    epochs: int = field(default=1, metadata={"help": "epochs of --steps-per-epoch steps, when --steps is 0"})
    steps_per_epoch: int = field(default=0, metadata={"help": "steps per epoch (0: dataset samples / global batch)"})
    batch_size: int = field(default=64, metadata={"help": "images per GPU per micro-batch"})
    accum_steps: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    blr: float = field(default=1.5e-4, metadata={"help": "base learning rate; lr = blr x global batch / 256 (MAE)"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the cosine schedule"})
    warmup_epochs: float = field(
        default=40.0, metadata={"help": "linear warmup in epochs (MAE: 40), at most a fifth of the run"}
    )
    warmup_steps: int = field(default=-1, metadata={"help": "linear warmup in steps, instead of --warmup-epochs"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on norms, biases, tokens)"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the gradient norm (0: off)"})
    # masking
    mask_ratio: float = field(
        default=-1.0, metadata={"help": "fraction of patches removed (srmae: downsampled; -1: the method's)"}
    )
    masking: str = field(
        default="",
        metadata={
            "help": "curriculum|random|semantic|instance|selective (empty: the method's)",
            "choices": ["", "curriculum", "random", "semantic", "instance", "selective"],
        },
    )
    curriculum_centers: str = field(
        default="0.0,0.5,1.0",
        metadata={"help": "progress where semantic, instance, random (and, given a 4th, selective) masking peak"},
    )
    curriculum_width: float = field(
        default=0.25, metadata={"help": "width (std) of each curriculum phase, in progress units"}
    )
    # methods (docs/TRAINER.md, Methods)
    selective_passes: int = field(
        default=2, metadata={"help": "SMIR online: no-grad random-mask passes per batch that estimate patch losses"}
    )
    selective_rounds: int = field(
        default=0,
        metadata={"help": "SMIR iterative: rounds over as many data partitions, each scored by the last (0: online)"},
    )
    folk_thresholds: str = field(
        default="0.005,0.01,0.05",
        metadata={"help": "FOLK: fractions of each image's spectral energy removed (weakest components first)"},
    )
    folk_momentum: float = field(default=0.996, metadata={"help": "FOLK: teacher EMA momentum (cosine to 1)"})
    folk_filters: str = field(
        default="com,rcom",
        metadata={
            "help": "FOLK: filters each view draws from: com (remove the weakest components), rcom (keep only them)"
        },
    )
    folk_views: int = field(
        default=2,
        metadata={
            "help": "FOLK: crops per image (2: each view's student predicts the teacher of the other view; "
            "1: of its own)"
        },
    )
    folk_freq_weight: float = field(
        default=0.0, metadata={"help": "FOLK: weight of a loss on the removed frequencies (0: off)"}
    )
    distill_weight: float = field(default=1.0, metadata={"help": "FOLK: weight of the self-distillation loss"})
    projector_hidden: int = field(
        default=0, metadata={"help": "FOLK: hidden width of the student's projector (0: 4 x encoder width)"}
    )
    lowres_factor: int = field(default=4, metadata={"help": "SRMAE: downsampling factor of the degraded patches"})
    # data
    augment: bool = field(
        default=True, metadata={"help": "RandomResizedCrop(0.2-1, bicubic) + flip (off: whole image, overfit checks)"}
    )
    workers: int = field(
        default=-1, metadata={"help": "DataLoader workers per GPU (-1: the CPUs available per GPU, minus one)"}
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "samples in each worker's shuffle buffer"})
    interleave: int = field(default=4, metadata={"help": "shards each DataLoader worker reads at once"})
    decode: str = field(
        default="cpu",
        metadata={
            "help": "where JPEGs are decoded and cropped: cpu (the DataLoader workers) or gpu (batched nvJPEG on "
            "the training device; the workers send the bytes)",
            "choices": ["cpu", "gpu"],
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for weights, data order, augmentation and masks"})
    # run
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the DDP-wrapped model and SMIR's scoring passes"}
    )
    log_every: int = field(
        default=10, metadata={"help": "print (and read the GPU's figures) every N steps; metrics.jsonl gets every step"}
    )
    vis_every: int = field(
        default=100, metadata={"help": "write a PNG of inputs, masks and reconstructions every N steps (0: off)"}
    )
    ckpt_every: int = field(default=500, metadata={"help": "save a checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(
        default=1, metadata={"help": "numbered checkpoints kept besides checkpoint.pt, newest first (0: all)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from OUTPUT/checkpoint.pt with its saved config"})
    subset: str = field(
        default="", metadata={"help": "train only on these samples: a .json subset file written by `c2f filter`"}
    )
    stop_after: int = field(
        default=0,
        metadata={"help": "leave after this many steps in this process, with a checkpoint (0: run to the end)"},
    )

    # What a checkpoint written before a field existed meant by leaving it out.
    ABSENT: ClassVar[dict[str, Any]] = {
        "instance_target": "local",
        "folk_filters": "com",
        "folk_views": 1,
        "folk_freq_weight": 0.0,
        "decode": "cpu",
    }

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(","))


def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(","))


def with_method(cfg: TrainConfig) -> TrainConfig:
    """The config with the method's defaults filled in where flags were left empty, checked; what
    the checkpoint saves, so a run's settings never depend on defaults that may change."""
    from shards.errors import UsageError

    from .methods import METHODS

    d = METHODS[cfg.method]
    cfg = dataclasses.replace(
        cfg,
        stages=cfg.stages or d.stages,
        masking=cfg.masking or d.masking,
        mask_ratio=d.mask_ratio if cfg.mask_ratio < 0 else cfg.mask_ratio,
    )
    stages = cfg.stages.split(",")
    problems = []
    if cfg.method in ("folk", "srmae") and "pixel" not in stages:
        problems.append(f"--method {cfg.method} reconstructs pixels: --stages must include pixel")
    if cfg.method == "folk" and cfg.mask_ratio > 0:
        problems.append("--method folk removes frequencies, not patches: leave --mask-ratio at 0")
    if cfg.selective_rounds and (cfg.selective_rounds < 2 or cfg.masking != "selective"):
        problems.append("--selective-rounds needs 2 or more rounds and --masking selective")
    if cfg.method == "srmae" and cfg.lowres_factor < 2:
        problems.append(f"--method srmae degrades patches: --lowres-factor must be 2 or more, got {cfg.lowres_factor}")
    if cfg.selective_passes < 1:
        problems.append("--selective-passes must be at least 1")
    from .methods import FOLK_FILTERS

    filters = _names(cfg.folk_filters)
    if any(f not in FOLK_FILTERS for f in filters) or len(set(filters)) < len(filters):
        problems.append(f"--folk-filters: one or both of {','.join(FOLK_FILTERS)}, got {cfg.folk_filters!r}")
    if cfg.folk_views not in (1, 2):
        problems.append(f"--folk-views must be 1 or 2, got {cfg.folk_views}")
    if not 0 <= cfg.mask_ratio < 1:
        problems.append(f"--mask-ratio must be in [0, 1), got {cfg.mask_ratio}")
    try:
        if any(not 0 <= t < 1 for t in _floats(cfg.folk_thresholds)):
            problems.append("--folk-thresholds are energy fractions in [0, 1)")
    except ValueError:
        problems.append(f"--folk-thresholds: numbers separated by commas, got {cfg.folk_thresholds!r}")
    if problems:
        raise UsageError("; ".join(problems))
    return cfg


def model_config_for(cfg: TrainConfig, spec):
    """The ModelConfig this run trains: the named size, the flags that override it, the shards' label space."""
    from shards.errors import UsageError

    from .model import model_config

    overrides: dict[str, Any] = {
        "num_classes": max(1, spec.num_classes),
        "ignore_index": spec.ignore_index,
        "stages": tuple(s.strip() for s in cfg.stages.split(",")),
        "cascade": cfg.decoder == "cascaded",
        "cascade_link": cfg.cascade_link,
        "multimodal_input": cfg.multimodal_input,
        "decoder_mlp_ratio": cfg.decoder_mlp_ratio,
        "lowres_factor": cfg.lowres_factor if cfg.method == "srmae" else 0,
        "distill": cfg.method == "folk",
        "distill_weight": cfg.distill_weight,
        "projector_hidden": cfg.projector_hidden,
        "instance_target": cfg.instance_target,
        "freq_weight": cfg.folk_freq_weight if cfg.method == "folk" else 0.0,
    }
    for name in ("img_size", "patch_size", "cell_size", "decoder_dim", "decoder_heads"):
        if getattr(cfg, name):
            overrides[name] = getattr(cfg, name)
    try:
        overrides["loss_weights"] = _floats(cfg.loss_weights)
        if cfg.decoder_depths:
            overrides["decoder_depths"] = tuple(int(x) for x in cfg.decoder_depths.split(","))
        return model_config(cfg.model, decoder_depth=cfg.decoder_depth or None, **overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(f"model settings: {e}") from None


def make_schedule(cfg: TrainConfig, num_samples: int, world: int):
    """The run's length and learning rate, derived once from the config and the dataset size."""
    from .engine import Schedule

    global_batch = cfg.batch_size * cfg.accum_steps * world
    spe = cfg.steps_per_epoch or max(1, num_samples // global_batch)
    total = cfg.steps or cfg.epochs * spe
    # MAE warms up for 40 epochs of its 400-1600; capped at a fifth so short runs reach the peak.
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else min(round(cfg.warmup_epochs * spe), total // 5)
    return Schedule(total, max(warmup, 0), cfg.blr * global_batch / 256, cfg.min_lr, spe)


def method_settings(cfg: TrainConfig):
    """The method's settings, as the training step and the data stream read them."""
    from .methods import MethodSettings

    return MethodSettings(
        cfg.method,
        selective_passes=cfg.selective_passes,
        selective_rounds=cfg.selective_rounds,
        folk_thresholds=_floats(cfg.folk_thresholds),
        folk_momentum=cfg.folk_momentum,
        folk_filters=_names(cfg.folk_filters),
        folk_views=cfg.folk_views,
    )


def make_loop(cfg: TrainConfig, schedule, ignore_index: int, rank: int):
    from .engine import Loop
    from .masking import Curriculum, Masking

    try:
        curriculum = Curriculum(_floats(cfg.curriculum_centers), cfg.curriculum_width)
    except ValueError as e:
        from shards.errors import UsageError

        raise UsageError(f"--curriculum-centers: {e}") from None
    masking = Masking(cfg.masking, cfg.mask_ratio, curriculum)
    method = method_settings(cfg)
    return Loop(
        schedule,
        masking=dataclasses.replace(masking, ignore_index=ignore_index),
        mask_seed=cfg.seed * 1_000_003 + rank,
        accum_steps=cfg.accum_steps,
        grad_clip=cfg.grad_clip,
        bf16=cfg.bf16,
        method=method,
        compile=cfg.compile,
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
    import gc

    import torch.distributed as dist

    try:
        return _train(cfg)
    finally:
        if dist.is_initialized():
            # The last references to DDP's gradient buckets (tensors with Python objects) can sit in
            # reference cycles that only a collection frees; freed during interpreter shutdown
            # instead, by a gloo thread, they abort the process ("terminate called without an
            # active exception") after the run's work is done. Free them while Python is whole.
            gc.collect()
            dist.destroy_process_group()


def _train(cfg: TrainConfig) -> int:
    import torch

    from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
    from .data import default_workers, device_batches, make_loader, read_spec
    from .engine import make_optimizer, train_steps
    from .logs import RunLog
    from .model import C2FMAE
    from .rounds import round_scores, segments, with_scores

    out = Path(cfg.output)
    ckpt, state = out / CHECKPOINT, None
    if cfg.resume:
        state = load_checkpoint(ckpt)
        cfg = resumed_config(cfg, state, ckpt)
    cfg = with_method(cfg)
    spec = read_shards(cfg.shards, read_spec)
    env = init_distributed()
    torch.manual_seed(cfg.seed)
    model = C2FMAE(model_config_for(cfg, spec)).to(env.device)
    schedule = make_schedule(cfg, spec.num_samples, env.world)
    workers = cfg.workers if cfg.workers >= 0 else default_workers()
    run_info = {"schedule": dataclasses.asdict(schedule), "world": env.world, "workers": workers}
    optimizer = make_optimizer(model, cfg.weight_decay, schedule.peak_lr)
    start = 0
    if state is not None:
        start, run_info = restore(ckpt, state, model, optimizer, run_info)
    loop = make_loop(cfg, schedule, model.cfg.ignore_index, env.rank)
    # `model` stays the plain module (state dicts, config, pictures); `train_model` is what steps.
    train_model = wrap_for_training(model, env, cfg.compile)
    end = min(schedule.total_steps, start + cfg.stop_after) if cfg.stop_after else schedule.total_steps
    curriculum = loop.masking.curriculum if cfg.masking == "curriculum" else None
    log = RunLog(out, env.rank, env.world, start, cfg.log_every, cfg.vis_every, curriculum)
    if env.rank == 0:
        print(banner(cfg, model, env, schedule, start, run_info["workers"]))

    def picture_step(step: int) -> bool:  # the only steps whose batch and predictions outlive them
        return log.pictures_at(step, step == end - 1)

    # One piece of steps, one data stream; SMIR's iterative form has a piece (and partition) per round.
    for first, stop, rnd in segments(start, end, schedule.total_steps, cfg.selective_rounds):
        partition = (rnd, cfg.selective_rounds) if rnd is not None else None
        scores = None
        if rnd:  # rounds after the first mask by the previous round's model's scores (scored before the stream starts)
            score = functools.partial(score_round, cfg, model, env, rnd, run_info["workers"])
            scores = round_scores(out, rnd, score, env.rank, env.world)
        stream = stream_config(cfg, schedule, model.cfg, env, first, partition, scores)
        loader = make_loader(stream, run_info["workers"])
        batches = device_batches(loader, env.device, model.cells, model.cfg.instance_target, model.cfg.img_size)
        if scores is not None:
            batches = with_scores(batches, scores.table(env.device), model.grid)
        for step_out in train_steps(train_model, optimizer, batches, range(first, stop), loop, keep=picture_step):
            step, last = step_out.step, step_out.step == end - 1
            log.step(step_out, schedule.progress(step), model.cfg, last)
            if (step + 1) % cfg.ckpt_every == 0 or last or step + 1 == stop:
                log.flush(console=False)
                if env.rank == 0:
                    state = checkpoint_state(model, optimizer, step + 1, cfg, run_info)
                    save_checkpoint(out, state, cfg.keep_checkpoints)
    log.close()
    return 0


def wrap_for_training(model, env: Dist, compile: bool):
    """The module the steps run: DDP around the model under torchrun, then torch.compile around
    that. Compiled last, dynamo sees DDP's gradient buckets and splits the graph at them
    (`torch._dynamo.config.optimize_ddp`), so each bucket's all-reduce starts while the backward
    of the layers before it still runs; compiled first and wrapped after, DDP would see one opaque
    graph and reduce only once its whole backward is done."""
    import torch

    train_model = model
    if env.world > 1:
        ids = [env.local] if env.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(train_model) if compile else train_model


def score_round(cfg: TrainConfig, model, env: Dist, rnd: int, workers: int):
    """SMIR: this rank's share of round `rnd`'s partition (every world-th shard), scored by the model
    as it is now: `workers` DataLoader processes decode, bf16 autocast on CUDA, the passes compiled
    with --compile."""
    import torch

    from .data import device_batches, expand_urls, whole_image_batches, whole_image_loader
    from .methods import PROBE_RATIO, loss_scorer
    from .rounds import score_partition

    urls = expand_urls(cfg.shards)[env.rank :: env.world]
    part, m = (rnd, cfg.selective_rounds), model.cfg
    if workers > 0:
        raw = whole_image_loader(urls, cfg.batch_size, m.img_size, m.cell_size, part, workers)
    else:
        raw = whole_image_batches(urls, cfg.batch_size, m.img_size, m.cell_size, part)
    generator = torch.Generator(env.device).manual_seed(cfg.seed * 1_000_003 + 7919 * rnd + env.rank)
    batches = device_batches(raw, env.device, model.cells, m.instance_target, m.img_size)
    scorer = loss_scorer(cfg.compile)
    return score_partition(model, batches, cfg.selective_passes, PROBE_RATIO, generator, scorer, cfg.bf16)


def stream_config(cfg: TrainConfig, schedule, mcfg, env: Dist, start: int, partition=None, scores=None):
    """This rank's data stream, from step `start` on (micro-batches are counted from step 0); in
    SMIR's rounds, `scores` gives each sample its row in the round's table."""
    from .data import StreamConfig, expand_urls

    urls, keys = expand_urls(cfg.shards), None
    if cfg.subset:  # only the shards that hold a selected sample are read, and only those samples kept
        from shards.subset import subset_for_stream

        urls, subset = subset_for_stream(cfg.subset, urls, cfg.shards, repeating=True)
        keys = subset.keys
    return StreamConfig(
        urls=tuple(urls),
        keys=keys,
        batch_size=cfg.batch_size,
        batches_per_epoch=schedule.steps_per_epoch * cfg.accum_steps,
        seed=cfg.seed,
        start_batch=start * cfg.accum_steps,
        img_size=mcfg.img_size,
        cell_size=mcfg.cell_size,
        augment=cfg.augment,
        shuffle=cfg.shuffle_buffer,
        interleave=cfg.interleave,
        rank=env.rank,
        world=env.world,
        partition=partition,
        views=method_settings(cfg).views,
        decode=cfg.decode,
        rows=scores.rows() if scores is not None else None,
        blank_row=scores.blank_row if scores is not None else 0,
    )


def read_shards(source: str, read_spec):
    from shards.errors import UsageError

    try:
        return read_spec(source)
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise UsageError(str(e)) from None


def banner(cfg: TrainConfig, model, env: Dist, s, start: int, workers: int) -> str:
    from .model import path_depths

    m = model.cfg
    global_batch = cfg.batch_size * cfg.accum_steps * env.world
    decoder = f"{cfg.decoder} {'+'.join(map(str, m.decoder_depths))} x {m.decoder_dim} ({m.decoder_heads} heads)"
    if m.cascade and len(m.stages) > 1:
        decoder += f", link {m.cascade_link}"
    decoder += f", blocks to each head {','.join(map(str, path_depths(m)))}"
    if "instance" in m.stages:
        decoder += f", instance target {m.instance_target}"
    if cfg.method == "folk":
        decoder += f"; FOLK {cfg.folk_views} view(s), filters {cfg.folk_filters}"
    return (
        f"c2fmae: {cfg.method} on {cfg.model}, "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.1f}M trained params, "
        f"decoder {decoder}, stages {','.join(m.stages)}; {env.world} process(es), global batch {global_batch}, "
        f"lr {s.peak_lr:.2e}, warmup {s.warmup_steps}, steps {start}->{s.total_steps} ({s.steps_per_epoch}/epoch), "
        f"masking {cfg.masking} {cfg.mask_ratio:g}, device {env.device}, {workers} loader workers, "
        f"JPEGs decoded on the {cfg.decode}"
    )


# --- checkpoints (files: c2fmae/checkpoint.py) ---------------------------------------------------


def checkpoint_state(model, optimizer, step: int, cfg: TrainConfig, run_info: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds. Masks and crops are functions of (seed, step, rank): no RNG state."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": cfg.to_json(),
        "model_config": model.cfg.to_json(),
        "run": run_info,
    }


def resumed_config(cfg: TrainConfig, state: dict[str, Any], path: Path) -> TrainConfig:
    """The saved config wins (same model, schedule, data order); where the data lives, where to
    write, and when to leave are this invocation's."""
    from .checkpoint import config_from

    mine = {"resume": True, "output": cfg.output, "shards": cfg.shards, "stop_after": cfg.stop_after}
    return config_from(TrainConfig, {**state["config"], **mine}, path, "train config")


def restore(path: Path, state: dict[str, Any], model, optimizer, run_info: dict[str, Any]):
    """Load a checkpoint into the run after checking it is this run's: (step to continue from,
    the saved run info, whose DataLoader worker count keeps the data order)."""
    from shards.errors import UsageError

    from .checkpoint import check_fits, config_from, load_weights
    from .model import ModelConfig

    check_fits(path, config_from(ModelConfig, state["model_config"], path, "model config"), model.cfg)
    saved = state.get("run") or {}
    for key in ("schedule", "world"):
        if saved.get(key) != run_info[key]:
            raise UsageError(
                f"{path} was saved by a run with another {key} ({saved.get(key)} vs {run_info[key]} now): "
                "resume with the same shards and number of processes"
            )
    load_weights(path, model, state["model"], "weights")
    load_weights(path, optimizer, state["optimizer"], "optimizer state")
    return int(state["step"]), {**run_info, "workers": int(saved.get("workers", run_info["workers"]))}
