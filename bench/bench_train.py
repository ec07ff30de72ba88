"""Trainer cost: can the loader feed the GPU, and what does each method's step cost against MAE?

1. Loader, on CPU (one thread, one DataLoader worker's view), 375x500 synthetic scenes -> 224:
   CPU ms per sample for the whole worker path (read, decode, crop, cell labels, collate) against
   decoding the same JPEGs alone (the baseline in the same process), a per-stage breakdown, and
   the bytes per sample the device receives; then the same for `--decode gpu`, where the workers
   send the JPEG bytes and the boxes (no decode, no crop): target <= 1 ms per sample; and what the
   decode and crop cost where they moved (the training device; on CPU, this process).
2. Optimizer steps on in-memory batches already on the device (no loader), alternating arms in one
   process, each built as `c2f pretrain --method M` builds it (ModelConfig, masking, MethodSettings)
   on the same encoder: MAE mode (pixel stage, random masking), the cascade (3 stages, curriculum
   masking) with the additive and the cross-attention link, the parallel arms (the same blocks,
   and every head as deep as its cascaded path), SMIR online (selective masking at 0.5,
   `--selective-passes` no-grad estimating passes per batch) and in rounds (the losses already
   cached, so the step alone), FOLK (two views with com/rcom, and one view with com) and SRMAE.
   Each arm's images/s (a FOLK image is two views: its batch holds half the images, so every arm
   encodes the same number of crops), its step time relative to MAE mode's and, on CUDA, peak
   memory; next to it the step's FLOPs per image counted from the model code (3x the trained
   forward, 1x the passes without gradients), the ratio a GPU should approach.
3. End to end (`--e2e`): the real DataLoader (--workers processes) over the shards, the device
   batches (decode on the device with --decode gpu), the step loop, per method, with the JPEGs
   decoded in the workers and on the device: images/s, peak memory, and the loader's share (the
   wall time the training process spent waiting for its next batch). A time budget
   (`--budget-s`, default 420) skips the arms that would not fit.

On CUDA (auto-detected): bf16, ViT-B, batch 256, every section in about 6 minutes on one H100; on
CPU: fp32, tiny, batch 16 (`--img-size 112` to quarter the cost).

    .venv/bin/python bench/bench_train.py                       # CPU: tiny, batch 16
    .venv/bin/python bench/bench_train.py --skip-steps --e2e --workers 1 --e2e-steps 2   # CPU, e2e only
    .venv/bin/python bench/bench_train.py --skip-loader --img-size 112 --cpu-time   # CPU, shared machine
    .venv/bin/python bench/bench_train.py --e2e                 # on a GPU: ViT-B, batch 256, bf16, all of it
    .venv/bin/python bench/bench_train.py --arms mae,smir,smir-rounds    # a subset of the arms
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from c2fmae.data import (
    StreamConfig,
    TrainStream,
    TrainTransform,
    centre_targets,
    collate,
    decode_maps,
    decode_on_device,
    device_batches,
    make_loader,
    patch_mode,
)
from c2fmae.engine import Loop, Schedule, make_optimizer, train_steps
from c2fmae.masking import Curriculum, Masking
from c2fmae.methods import METHODS, PROBE_RATIO, MethodSettings
from c2fmae.model import C2FMAE, ModelConfig, model_config
from shards.reader import _decode_mask, _decode_rgb, decode_sample, expand_urls, shard_samples
from shards.synthetic import write_synthetic_dataset


def cpu_ms(fn, items) -> float:
    t0 = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - t0) / len(items) * 1e3


def stream_ms(shards: str, samples: int, decode: str) -> tuple[float, dict]:
    """CPU ms per sample of the whole worker path (one thread), and its first batch."""
    cfg = StreamConfig(tuple(expand_urls(shards)), 16, 10**6, seed=0, shuffle=100, decode=decode)
    stream = iter(TrainStream(cfg))
    first = next(stream)
    n = samples // 16
    t0 = time.process_time()
    for _ in range(n):
        next(stream)
    return (time.process_time() - t0) / (n * 16) * 1e3, first


def batch_bytes(batch: dict) -> float:
    """Bytes per sample that reach the device (the JPEG buffer included)."""
    n = len(batch["key"])
    return sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor)) / n


def loader_cost(shards: str, samples: int) -> dict:
    """CPU ms per sample, one thread: both worker paths, their stages on samples in memory, and the
    decode and crop `--decode gpu` moves to the training device (here run on this CPU)."""
    import random

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each DataLoader worker gets
    raw = [s for url in expand_urls(shards) for s in shard_samples(url)][:samples]
    rng = random.Random(0)
    tf = TrainTransform(224, 4)
    decoded = [decode_sample(s, as_tensors=False) for s in raw]
    maps_only = [decode_maps(s) for s in raw]
    stages = {
        "JPEG decode (baseline)": cpu_ms(lambda s: _decode_rgb(s["jpg"]), raw),
        "two map decodes": cpu_ms(lambda s: (_decode_mask(s["sem.png"]), _decode_mask(s["inst.png"])), raw),
        "crop + flip + cell labels": cpu_ms(lambda d: tf(d, rng), decoded),
    }
    done = [tf(d, rng) for d in decoded]
    stages["collate"] = cpu_ms(lambda i: collate(done[i : i + 16]), range(0, len(done), 16)) / 16
    gpu_stages = {
        "JPEG header + two map decodes": cpu_ms(decode_maps, raw),
        "box + flip + cell labels (no pixels)": cpu_ms(lambda d: tf(d, rng), maps_only),
    }
    whole, first = stream_ms(shards, samples, "cpu")
    whole_gpu, first_gpu = stream_ms(shards, samples, "gpu")
    cpu = torch.device("cpu")
    moved = cpu_ms(lambda b: decode_on_device(b, cpu, 224), [first_gpu] * 4) / 16
    torch.set_num_threads(threads)
    return {
        "stages": stages,
        "whole": whole,
        "bytes": batch_bytes(first),
        "gpu_stages": gpu_stages,
        "whole_gpu": whole_gpu,
        "bytes_gpu": batch_bytes(first_gpu),
        "moved": moved,
    }


def device_batches_in_memory(
    n: int, bs: int, num_classes: int, device: torch.device, g: torch.Generator, img: int = 224, cells: int = 4
):
    """Prepared batches (what data.prepare gives the engine) with real regions: bands and boxes.
    `img` pixels a side, 4-pixel cells, `cells` cells per patch side; each batch also carries a
    `patch_loss` as SMIR's rounds read it from the previous round's scores."""
    out = []
    c = img // 4  # cells a side

    def at(x: int) -> int:  # a position on the 56-cell grid of a 224 image, at this size
        return x * c // 56

    for _ in range(n):
        sem = torch.randint(0, 3, (bs, 1, 1)).expand(bs, c, c).clone()
        sem[:, at(20) : at(40), at(10) : at(30)] = torch.randint(3, num_classes, (bs, 1, 1), generator=g)
        inst = torch.zeros(bs, c, c, dtype=torch.long)
        inst[:, at(16) : at(44), at(8) : at(36)] = 1
        inst[:, at(30) : at(50), at(36) : at(52)] = 2
        sem_patch = patch_mode(sem, cells)
        batch = {
            "image": torch.randn(bs, 3, img, img, generator=g),
            "sem_cells": sem,
            "inst_cells": centre_targets(inst, torch.zeros(bs, c, c, dtype=torch.bool), cells),
            "sem_patch": sem_patch,
            "inst_patch": patch_mode(inst, cells),
            "patch_loss": torch.rand(sem_patch.shape, generator=g),
            "crop": torch.zeros(bs, 7, dtype=torch.int32),
            "key": [str(i) for i in range(bs)],
        }
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return out


@dataclass(frozen=True)
class Arm:
    """One measured configuration: the model, the masking and the method, as `c2f pretrain` builds them."""

    model: ModelConfig
    masking: Masking
    method: MethodSettings
    cached_losses: bool = False  # SMIR rounds: the batch carries the previous round's per-patch losses

    @property
    def views(self) -> int:
        return self.method.views


def arms_for(name: str, img: int, passes: int) -> dict[str, Arm]:
    """Every arm at model size `name`, `img` pixels, with its method's defaults (c2fmae.methods.METHODS)."""

    def arm(method: str, cached: bool = False, settings: dict | None = None, **model_overrides) -> Arm:
        d = METHODS[method]
        stages = tuple(d.stages.split(","))
        mcfg = model_config(name, num_classes=150, img_size=img, stages=stages, **model_overrides)
        masking = Masking(d.masking, d.mask_ratio, Curriculum())
        return Arm(mcfg, masking, MethodSettings(method, selective_passes=passes, **(settings or {})), cached)

    base = model_config(name, num_classes=150, img_size=img)
    deep = tuple(sum(base.decoder_depths[: k + 1]) for k in range(3))  # each head as deep as its cascaded path
    return {
        "mae": arm("mae"),
        "cascade-add": arm("c2fmae"),
        "cascade-xattn": arm("c2fmae", cascade_link="xattn"),
        "parallel": arm("c2fmae", cascade=False),
        "parallel-deep": arm("c2fmae", cascade=False, decoder_depths=deep),
        "smir": arm("smir"),
        "smir-rounds": arm("smir", cached=True),
        "folk": arm("folk", distill=True),
        "folk-1view": arm("folk", settings={"folk_views": 1, "folk_filters": ("com",)}, distill=True),
        "srmae": arm("srmae", lowres_factor=4),
    }


LABELS = {
    "mae": "MAE mode (pixel, random 0.75)",
    "cascade-add": "cascade, add (curriculum)",
    "cascade-xattn": "cascade, xattn (curriculum)",
    "parallel": "parallel, same blocks",
    "parallel-deep": "parallel, path-matched depths",
    "smir": "SMIR online (selective 0.5)",
    "smir-rounds": "SMIR rounds (cached losses)",
    "folk": "FOLK (2 views com/rcom + teacher)",
    "folk-1view": "FOLK (1 view com + teacher)",
    "srmae": "SRMAE (all patches, 3/4 low-res)",
}
E2E = ("mae", "cascade-add", "smir", "folk", "srmae")  # --e2e: the methods, each with both decoders


def step_flops(arm: Arm, img: int) -> float:
    """Estimated FLOPs of one training step per image: 3x the forward of what is trained (forward +
    backward), plus 1x what runs without gradients (SMIR's estimating passes, FOLK's teacher);
    counted by torch's FlopCounterMode on a meta-device model (shapes only, nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> float:
        with FlopCounterMode(display=False) as c:
            fn()
        return c.get_total_flops()

    with torch.device("meta"):
        model = C2FMAE(arm.model).to("meta")
        v = arm.views
        n, length, c = v, model.num_patches, img // 4
        k = model.inst_channels
        imgs, sem, inst = torch.empty(n, 3, img, img), torch.zeros(n, c, c, dtype=torch.long), torch.zeros(n, k, c, c)
        none, every = torch.zeros(n, length), torch.ones(n, length)
        method = arm.method.name
        if method == "folk":  # every patch of each view in; the teacher's forward has no backward
            teacher = count(lambda: model.teacher(imgs, model.pos_embed))
            whole = count(lambda: model(imgs, none, sem, inst, keep=length, view=imgs, loss_on=every, views=v))
            return 3 * (whole - teacher) + teacher
        if method == "srmae":  # every patch in; each is embedded both ways and one kept, whatever the map
            return 3 * count(lambda: model(imgs, none, sem, inst, keep=length, lowres=every, loss_on=every))
        flops = 3 * count(lambda: model(imgs, none, sem, inst, keep=arm.masking.kept(length)))
        if method == "smir" and not arm.cached_losses:
            keep = length - round(PROBE_RATIO * length)
            flops += arm.method.selective_passes * count(lambda: model(imgs, none, sem, inst, keep=keep))
        return flops


def step_rate(model, data, arm: Arm, steps: int, bf16: bool, clock=time.perf_counter) -> tuple[float, float]:
    """(images per second of `clock`, peak GB on CUDA) over `steps` optimizer steps after two warm-up
    steps. On a shared CPU, `clock=time.process_time` counts this process's CPU seconds only."""
    cuda = data[0]["image"].is_cuda
    if not arm.cached_losses:  # only SMIR's rounds read cached losses; elsewhere they must not exist
        data = [{k: v for k, v in b.items() if k != "patch_loss"} for b in data]
    loop = Loop(Schedule(steps + 2, 1, 1e-4), arm.masking, bf16=bf16, method=arm.method)
    opt = make_optimizer(model, 0.05, 1e-4)
    it = iter(data * (steps + 2))
    for _ in train_steps(model, opt, it, range(2), loop, keep=lambda s: False):
        pass
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = clock()
    for out in train_steps(model, opt, it, range(2, steps + 2), loop, keep=lambda s: False):
        last = out.losses["total"]
    float(last)  # the sync that ends the timed window
    if cuda:
        torch.cuda.synchronize()
    rate = steps * data[0]["image"].shape[0] / arm.views / (clock() - t0)
    return rate, (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)


class Waited:
    """An iterator's items, with the wall seconds spent waiting for them (the loader's share)."""

    def __init__(self, items):
        self.items, self.seconds = iter(items), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = next(self.items)
        self.seconds += time.perf_counter() - t0
        return item


def e2e_rate(arm: Arm, shards: str, batch: int, workers: int, steps: int, decode: str, device, bf16: bool) -> dict:
    """The real pipeline for one arm: DataLoader workers -> device batches (decoded on the device
    with --decode gpu) -> train_steps; images/s, peak GB, and the share of the wall time the
    training process waited for batches, over `steps` steps after 3 warm-up steps."""
    torch.manual_seed(0)
    model = C2FMAE(arm.model).to(device)
    cuda = device.type == "cuda"
    images = batch // arm.views  # the same crops per step as every other arm
    cfg = StreamConfig(
        tuple(expand_urls(shards)), images, 10**6, seed=0, img_size=arm.model.img_size, views=arm.views, decode=decode
    )
    loader = make_loader(cfg, workers)
    batches = Waited(device_batches(loader, device, model.cells, arm.model.instance_target, arm.model.img_size))
    loop = Loop(Schedule(steps + 3, 1, 1e-4), arm.masking, bf16=bf16, method=arm.method)
    opt = make_optimizer(model, 0.05, 1e-4)
    for _ in train_steps(model, opt, batches, range(3), loop, keep=lambda s: False):
        pass
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    batches.seconds, t0 = 0.0, time.perf_counter()
    for out in train_steps(model, opt, batches, range(3, steps + 3), loop, keep=lambda s: False):
        last = out.losses["total"]
    float(last)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    del loader
    return {
        "rate": steps * images / wall,
        "peak": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "share": batches.seconds / wall,
    }


def main():
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="c2fmae_vit_base" if cuda else "c2fmae_vit_tiny")
    ap.add_argument("--batch-size", type=int, default=256 if cuda else 16, help="crops per step (FOLK: 2 per image)")
    ap.add_argument("--steps", type=int, default=10 if cuda else 4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=224, help="image side of the step arms (the loader: 224)")
    ap.add_argument("--selective-passes", type=int, default=2, help="SMIR online: estimating passes per batch")
    ap.add_argument("--arms", default=",".join(LABELS), help="comma-separated subset of: " + ", ".join(LABELS))
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: the CPUs available, minus one)")
    ap.add_argument("--samples", type=int, default=256, help="synthetic 375x500 samples for the loader")
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--e2e", action="store_true", help="also the real pipeline per method, both decoders")
    ap.add_argument("--e2e-steps", type=int, default=8 if cuda else 2)
    ap.add_argument("--budget-s", type=float, default=420.0, help="--e2e: skip the arms that would start past this")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU: time the steps by this process's CPU seconds on one thread (wall time on a machine "
        "shared with other jobs measures their load more than the step)",
    )
    args = ap.parse_args()
    start = time.perf_counter()
    device = torch.device("cuda" if cuda else "cpu")
    from c2fmae.data import default_workers

    workers = args.workers or default_workers()

    with tempfile.TemporaryDirectory() as d:
        if not args.skip_loader or args.e2e:
            write_synthetic_dataset(d, args.samples, 32, seed=0, size=(375, 500))
        if not args.skip_loader:
            cost = loader_cost(d, args.samples)
            base = cost["stages"]["JPEG decode (baseline)"]
            print(f"loader, one thread, 375x500 -> 224, {args.samples} samples:")
            for name, ms in cost["stages"].items():
                print(f"  {name:38s} {ms:6.2f} ms/sample")
            print(
                f"  {'whole worker path':38s} {cost['whole']:6.2f} ms/sample = {cost['whole'] / base:.2f}x "
                f"the JPEG decode alone (target <= 4 ms); to the device: {cost['bytes'] / 1e3:.1f} KB/sample"
            )
            print("  --decode gpu, the workers:")
            for name, ms in cost["gpu_stages"].items():
                print(f"    {name:36s} {ms:6.2f} ms/sample")
            print(
                f"    {'whole worker path':36s} {cost['whole_gpu']:6.2f} ms/sample = "
                f"{cost['whole_gpu'] / cost['whole']:.2f}x the CPU path's (target <= 1 ms); to the device: "
                f"{cost['bytes_gpu'] / 1e3:.1f} KB/sample"
            )
            print(
                f"    moved to the training device (batched decode + crops; here on this CPU): "
                f"{cost['moved']:.2f} ms/sample"
            )

        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        arms = arms_for(args.model, args.img_size, args.selective_passes)
        chosen = ["mae", *[a.strip() for a in args.arms.split(",") if a.strip() != "mae"]]  # MAE: the reference
        unknown = set(chosen) - set(arms)
        if unknown:
            raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {', '.join(arms)}")
        arms = {k: arms[k] for k in chosen}
        bf16 = cuda
        rates: dict[str, list[float]] = {name: [] for name in arms}
        if not args.skip_steps:
            ref = arms["mae"].model
            data = device_batches_in_memory(
                2, args.batch_size, 150, device, g, args.img_size, ref.patch_size // ref.cell_size
            )
            clock = time.perf_counter
            if args.cpu_time and not cuda:
                torch.set_num_threads(1)  # CPU seconds of one thread: no spinning of idle OpenMP threads counted
                clock = time.process_time
            peaks: dict[str, float] = {}
            for _ in range(args.repeats):  # alternate, so drifts of a shared machine hit every arm
                for name, arm in arms.items():
                    torch.manual_seed(0)
                    model = C2FMAE(arm.model).to(device)
                    rate, peak = step_rate(model, data, arm, args.steps, bf16=bf16, clock=clock)
                    del model
                    rates[name].append(rate)
                    peaks[name] = max(peaks.get(name, 0.0), peak)
            where = "CUDA bf16" if cuda else f"CPU fp32, {torch.get_num_threads()} threads"
            if clock is time.process_time:
                where += ", rates per CPU second of this process"
            print(
                f"steps: {args.model} at {args.img_size} px, {args.batch_size} crops per step, {where}, decoder "
                f"blocks as docs/TRAINER.md, {args.steps} timed steps x {args.repeats} repeats (median)"
            )
            mae = statistics.median(rates["mae"])
            flops = {name: step_flops(arm, args.img_size) for name, arm in arms.items()}
            for name in arms:
                r = statistics.median(rates[name])
                mem = f", peak {peaks[name]:.1f} GB" if cuda else ""
                ms = 1e3 * args.batch_size / arms[name].views / r
                print(
                    f"  {LABELS[name]:34s} {r:8.1f} images/s, {ms:8.1f} ms/step = {mae / r:.2f}x MAE mode's per image "
                    f"(FLOPs: {flops[name] / 1e9:.1f} G/image = {flops[name] / flops['mae']:.2f}x){mem}"
                )
            if "smir" in arms and "smir-rounds" in arms:
                online, cached = (statistics.median(rates[k]) for k in ("smir", "smir-rounds"))
                print(
                    f"  SMIR online's {args.selective_passes} estimating passes: {cached / online - 1:.2f} of a step "
                    f"at its ratio (expected about passes / 3 = {args.selective_passes / 3:.2f}, less since each "
                    "pass encodes a quarter of the patches and the step half)"
                )

        if args.e2e:
            print(
                f"end to end: {args.model}, {args.batch_size} crops per step, {workers} loader workers, "
                f"{'CUDA bf16' if cuda else 'CPU fp32'}, {args.e2e_steps} timed steps after 3"
            )
            for name in [a for a in E2E if a in arms]:
                for decode in ("cpu", "gpu"):
                    if time.perf_counter() - start > args.budget_s:
                        print(f"  {LABELS[name]:34s} --decode {decode}: skipped (past --budget-s {args.budget_s:.0f})")
                        continue
                    r = e2e_rate(arms[name], d, args.batch_size, workers, args.e2e_steps, decode, device, bf16)
                    mem = f", peak {r['peak']:.1f} GB" if cuda else ""
                    print(
                        f"  {LABELS[name]:34s} --decode {decode}: {r['rate']:8.1f} images/s, loader's share "
                        f"{r['share']:.0%}{mem}",
                        flush=True,
                    )
    print(f"bench_train: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
