"""Trainer cost: can the loader feed the GPU, and what does the cascade cost against MAE?

1. Loader, on CPU (one thread, one DataLoader worker's view), 375x500 synthetic scenes -> 224:
   CPU ms per sample for the whole worker path (read, decode, crop, cell labels, collate) against
   decoding the same JPEGs alone (the baseline in the same process), a per-stage breakdown, and
   the bytes per sample the device receives. Targets: <= 4 ms, <= 200 KB.
2. Optimizer steps on in-memory batches already on the device (no loader), alternating arms in one
   process, each built as `c2f pretrain --method M` builds it (ModelConfig, masking, MethodSettings)
   on the same encoder: MAE mode (pixel stage, random masking), the cascade (3 stages, curriculum
   masking) with the additive and the cross-attention link, SMIR online (selective masking at 0.5,
   `--selective-passes` no-grad estimating passes per batch) and in rounds (the losses already cached,
   so the step alone; the rounds' scoring is a forward pass per image once per round), FOLK (the
   whole filtered image in, EMA teacher on the original) and SRMAE (all patches in, 3/4 of them
   downsampled). Each arm's images/s, its step time relative to MAE mode's and, on CUDA, peak
   memory; next to it the step's FLOPs per image counted from the model code (3x the trained
   forward, 1x the passes without gradients), the ratio a GPU should approach. On CUDA
   (auto-detected): bf16, defaults ViT-B, batch 256; on CPU: fp32, defaults tiny, batch 16
   (`--img-size 112` to quarter the cost). Target on the GPU: cascade >= 0.8x MAE mode's images/s.
3. Loader throughput with --workers processes against what one step consumes.

    .venv/bin/python bench/bench_train.py                       # CPU: tiny, batch 16
    .venv/bin/python bench/bench_train.py --skip-loader --img-size 112 --cpu-time   # CPU, shared machine
    .venv/bin/python bench/bench_train.py --steps 20            # on a GPU: ViT-B, batch 256, bf16
    .venv/bin/python bench/bench_train.py --arms mae,smir,smir-rounds    # a subset of the arms
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from c2fmae.data import StreamConfig, TrainStream, TrainTransform, collate, make_loader, patch_mode
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


def loader_cost(shards: str, samples: int) -> dict:
    """CPU ms per sample, one thread: the whole worker path, and its stages on samples in memory."""
    import random

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each DataLoader worker gets
    raw = [s for url in expand_urls(shards) for s in shard_samples(url)][:samples]
    rng = random.Random(0)
    tf = TrainTransform(224, 4)
    decoded = [decode_sample(s, as_tensors=False) for s in raw]
    stages = {
        "JPEG decode (baseline)": cpu_ms(lambda s: _decode_rgb(s["jpg"]), raw),
        "two map decodes": cpu_ms(lambda s: (_decode_mask(s["sem.png"]), _decode_mask(s["inst.png"])), raw),
        "crop + flip + cell labels": cpu_ms(lambda d: tf(d, rng), decoded),
    }
    done = [tf(d, rng) for d in decoded]
    stages["collate"] = cpu_ms(lambda i: collate(done[i : i + 16]), range(0, len(done), 16)) / 16
    cfg = StreamConfig(tuple(expand_urls(shards)), 16, 10**6, seed=0, shuffle=100)
    stream = iter(TrainStream(cfg))
    first = next(stream)
    n = samples // 16
    t0 = time.process_time()
    for _ in range(n):
        next(stream)
    whole = (time.process_time() - t0) / (n * 16) * 1e3
    nbytes = sum(v.numel() * v.element_size() for v in first.values() if isinstance(v, torch.Tensor)) / 16
    torch.set_num_threads(threads)
    return {"stages": stages, "whole": whole, "bytes": nbytes}


def device_batches(
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
        sem_patch = patch_mode(sem, cells)
        batch = {
            "image": torch.randn(bs, 3, img, img, generator=g),
            "sem_cells": sem,
            "inst_cells": torch.rand(bs, 4, c, c, generator=g).round(),
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


def arms_for(name: str, img: int, passes: int) -> dict[str, Arm]:
    """Every arm at model size `name`, `img` pixels, with its method's defaults (c2fmae.methods.METHODS)."""

    def arm(method: str, cached: bool = False, **model_overrides) -> Arm:
        d = METHODS[method]
        stages = tuple(d.stages.split(","))
        mcfg = model_config(name, num_classes=150, img_size=img, stages=stages, **model_overrides)
        masking = Masking(d.masking, d.mask_ratio, Curriculum())
        return Arm(mcfg, masking, MethodSettings(method, selective_passes=passes), cached)

    return {
        "mae": arm("mae"),
        "cascade-add": arm("c2fmae"),
        "cascade-xattn": arm("c2fmae", cascade_link="xattn"),
        "smir": arm("smir"),
        "smir-rounds": arm("smir", cached=True),
        "folk": arm("folk", distill=True),
        "srmae": arm("srmae", lowres_factor=4),
    }


LABELS = {
    "mae": "MAE mode (pixel, random 0.75)",
    "cascade-add": "cascade, add (curriculum)",
    "cascade-xattn": "cascade, xattn (curriculum)",
    "smir": "SMIR online (selective 0.5)",
    "smir-rounds": "SMIR rounds (cached losses)",
    "folk": "FOLK (all patches + teacher)",
    "srmae": "SRMAE (all patches, 3/4 low-res)",
}


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
        n, length, c = 1, model.num_patches, img // 4
        imgs, sem, inst = torch.empty(n, 3, img, img), torch.zeros(n, c, c, dtype=torch.long), torch.zeros(n, 4, c, c)
        none, every = torch.zeros(n, length), torch.ones(n, length)
        method = arm.method.name
        if method == "folk":  # every patch of the view in; the teacher's forward has no backward
            teacher = count(lambda: model.teacher(imgs, model.pos_embed))
            whole = count(lambda: model(imgs, none, sem, inst, keep=length, view=imgs, loss_on=every))
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
    for _ in train_steps(model, opt, it, range(2), loop):
        pass
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = clock()
    for out in train_steps(model, opt, it, range(2, steps + 2), loop):
        last = out.losses["total"]
    float(last)  # the sync that ends the timed window
    if cuda:
        torch.cuda.synchronize()
    rate = steps * data[0]["image"].shape[0] / (clock() - t0)
    return rate, (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)


def main():
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="c2fmae_vit_base" if cuda else "c2fmae_vit_tiny")
    ap.add_argument("--batch-size", type=int, default=256 if cuda else 16)
    ap.add_argument("--steps", type=int, default=10 if cuda else 4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=224, help="image side of the step arms (the loader: 224)")
    ap.add_argument("--selective-passes", type=int, default=2, help="SMIR online: estimating passes per batch")
    ap.add_argument("--arms", default=",".join(LABELS), help="comma-separated subset of: " + ", ".join(LABELS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=256, help="synthetic 375x500 samples for the loader")
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU: time the steps by this process's CPU seconds on one thread (wall time on a machine "
        "shared with other jobs measures their load more than the step)",
    )
    args = ap.parse_args()
    device = torch.device("cuda" if cuda else "cpu")

    with tempfile.TemporaryDirectory() as d:
        if not args.skip_loader:
            write_synthetic_dataset(d, args.samples, 32, seed=0, size=(375, 500))
            cost = loader_cost(d, args.samples)
            base = cost["stages"]["JPEG decode (baseline)"]
            print(f"loader, one thread, 375x500 -> 224, {args.samples} samples:")
            for name, ms in cost["stages"].items():
                print(f"  {name:28s} {ms:6.2f} ms/sample")
            print(
                f"  whole worker path            {cost['whole']:6.2f} ms/sample = {cost['whole'] / base:.2f}x the JPEG "
                f"decode alone (target <= 4 ms)"
            )
            print(f"  to the device: {cost['bytes'] / 1e3:.1f} KB/sample (target <= 200 KB)")

        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        arms = arms_for(args.model, args.img_size, args.selective_passes)
        chosen = ["mae", *[a.strip() for a in args.arms.split(",") if a.strip() != "mae"]]  # MAE: the reference
        unknown = set(chosen) - set(arms)
        if unknown:
            raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {', '.join(arms)}")
        arms = {k: arms[k] for k in chosen}
        ref = arms["mae"].model
        data = device_batches(2, args.batch_size, 150, device, g, args.img_size, ref.patch_size // ref.cell_size)
        models = {name: C2FMAE(arm.model).to(device) for name, arm in arms.items()}
        clock = time.perf_counter
        if args.cpu_time and not cuda:
            torch.set_num_threads(1)  # CPU seconds of one thread: no spinning of idle OpenMP threads counted
            clock = time.process_time
        rates: dict[str, list[float]] = {name: [] for name in arms}
        peaks: dict[str, float] = {}
        for _ in range(args.repeats):  # alternate, so drifts of a shared machine hit every arm
            for name, arm in arms.items():
                rate, peak = step_rate(models[name], data, arm, args.steps, bf16=cuda, clock=clock)
                rates[name].append(rate)
                peaks[name] = max(peaks.get(name, 0.0), peak)
        where = "CUDA bf16" if cuda else f"CPU fp32, {torch.get_num_threads()} threads"
        if clock is time.process_time:
            where += ", rates per CPU second of this process"
        print(
            f"steps: {args.model} at {args.img_size} px, batch {args.batch_size}, {where}, decoder blocks as "
            f"docs/TRAINER.md, {args.steps} timed steps x {args.repeats} repeats (median)"
        )
        mae = statistics.median(rates["mae"])
        flops = {name: step_flops(arm, args.img_size) for name, arm in arms.items()}
        for name in arms:
            r = statistics.median(rates[name])
            mem = f", peak {peaks[name]:.1f} GB" if cuda else ""
            ms = 1e3 * args.batch_size / r
            print(
                f"  {LABELS[name]:34s} {r:8.1f} images/s, {ms:8.1f} ms/step = {mae / r:.2f}x MAE mode's step "
                f"(FLOPs: {flops[name] / 1e9:.1f} G/image = {flops[name] / flops['mae']:.2f}x){mem}"
            )
        if "smir" in arms and "smir-rounds" in arms:
            online, cached = (statistics.median(rates[k]) for k in ("smir", "smir-rounds"))
            print(
                f"  SMIR online's {args.selective_passes} estimating passes: {cached / online - 1:.2f} of a step at "
                f"its ratio (expected about passes / 3 = {args.selective_passes / 3:.2f}, less since each pass "
                "encodes a quarter of the patches and the step half)"
            )

        if not args.skip_loader:
            cfg = StreamConfig(tuple(expand_urls(d)), args.batch_size, 10**6, seed=0)
            it = iter(make_loader(cfg, args.workers))
            next(it)
            n = max(2, 512 // args.batch_size)
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            rate = n * args.batch_size / (time.perf_counter() - t0)
            slowest = min(statistics.median(v) for v in rates.values())
            print(
                f"loader, {args.workers} workers: {rate:.1f} samples/s = {rate / slowest:.1f}x what the slowest arm's "
                "step consumes here"
            )


if __name__ == "__main__":
    main()
