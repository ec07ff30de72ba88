"""`c2f label --preset empty` against decoding the same JPEGs with 2 processes.

The `empty` preset computes no labels, so what it costs beyond decoding is the pipeline's own
per-image cost (read, decode, pack, PNG-encode, tar write, Ray scheduling): the CPU share every
GPU run pays too. Target: the job (validation off, Ray start-up included) at >= 0.5x the rate of
a multiprocessing pool of 2 that reads each file and decodes it in full with PIL (`convert("RGB")`).

The inputs are made once and cached under `--cache` (keyed by N): ImageNet-sized JPEGs (500x375
or 375x500, quality 90, ~110 KB), random crops of the photos in samples/train, flipped, tinted and
given sensor-like luma grain so that they compress like photos rather than flat colour. The baseline
runs before and after the job and its mean is the reference. The machine is shared and a loaded
one flatters the job (its many processes get a larger share of the cores than the baseline's 2),
so the CPU time per image of both process trees is printed too; their ratio is what an idle
machine would give if the job kept both cores busy throughout (its start-up does not).

    .venv/bin/python bench/bench_empty.py [--images 10000] [--rounds 1] [-- c2f label flags]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
QUALITY = 90
GRAIN = 22.0  # std of the luma noise added: brings q90 (4:2:0) files to ImageNet's ~110 KB


def _make_one(args: tuple[int, str, str]) -> int:
    i, src, dst = args
    rng = np.random.default_rng(i)
    im = Image.open(src).convert("RGB")
    w, h = (500, 375) if rng.random() < 0.75 else (375, 500)  # ImageNet: mostly landscape
    scale = rng.uniform(0.5, 1.0)
    cw = min(im.width, int(im.width * scale))
    ch = min(im.height, max(1, int(cw * h / w)))
    x0, y0 = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
    crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    rgb = np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2, size=3)
    rgb += rng.normal(0.0, GRAIN, size=(h, w, 1))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(dst, format="JPEG", quality=QUALITY)
    return os.path.getsize(dst)


def make_inputs(cache: Path, n: int) -> Path:
    """An ImageNet-style tree `<wnid>/<wnid>_<i>.JPEG` of n images; made once per n."""
    tree, done = cache / f"empty-{n}", cache / f"empty-{n}.done"
    if done.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    sources = sorted(str(p) for p in (ROOT / "samples" / "train").glob("*/*.JPEG"))
    jobs = []
    for i in range(n):
        wnid = f"n{1000000 + i % 100:08d}"
        (tree / wnid).mkdir(parents=True, exist_ok=True)
        jobs.append((i, sources[i % len(sources)], str(tree / wnid / f"{wnid}_{i:06d}.JPEG")))
    t0 = time.perf_counter()
    with Pool(2) as pool:
        sizes = pool.map(_make_one, jobs, chunksize=64)
    done.write_text(f"{n} images, mean {np.mean(sizes) / 1e3:.0f} KB\n")
    print(f"made {n} inputs in {time.perf_counter() - t0:.0f}s: mean {np.mean(sizes) / 1e3:.0f} KB", flush=True)
    return tree


def _decode(path: str) -> int:
    with open(path, "rb") as f:
        im = Image.open(f)
        return im.convert("RGB").width


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (and theirs, once reaped)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def baseline(files: list[str]) -> tuple[float, float]:
    """Images/s of 2 processes that read and fully decode every file (pool start included), and
    their CPU ms per image."""
    t0, c0 = time.perf_counter(), _children_cpu()
    with Pool(2) as pool:
        for _ in pool.imap_unordered(_decode, files, chunksize=64):
            pass
    pool.join()  # reaped, so getrusage counts the workers
    return len(files) / (time.perf_counter() - t0), 1000 * (_children_cpu() - c0) / len(files)


class TreeCpu(threading.Thread):
    """CPU seconds of a process and all its descendants (Ray's GCS, raylet, agents and workers),
    polled: they are not reaped through the bench, so getrusage does not see them."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.seen, self.done = psutil.Process(pid), {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                except psutil.Error:
                    continue
            self.done.wait(0.1)

    def seconds(self) -> float:
        return sum(self.seen.values())


def run_job(tree: Path, n: int, extra: list[str]) -> tuple[float, float, str]:
    """Images/s of the whole `c2f label` process (Ray start-up included), CPU ms per image of its
    process tree (Ray's processes included; polled, so a last fraction of a second is missed), and
    its output."""
    out = Path(tempfile.mkdtemp(prefix="c2f-bench-empty-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [sys.executable, "-m", "c2f", "label", str(tree), str(out / "out"), "--preset", "empty", "--no-validate"]
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cpu = TreeCpu(proc.pid)
        cpu.start()
        stdout, stderr = proc.communicate()
        secs = time.perf_counter() - t0
        cpu.done.set()
        cpu.join()
        if proc.returncode != 0:
            raise SystemExit(f"c2f label failed ({proc.returncode}):\n{stdout}\n{stderr}")
        done = re.search(r"done: (\d+) images", stdout)
        if not done or int(done.group(1)) != n:
            raise SystemExit(f"c2f label did not pack all {n} images:\n{stdout}")
        return n / secs, 1000 * cpu.seconds() / n, stdout
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1, help="job runs, each between two baseline runs")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "c2f-bench-inputs"))
    ap.add_argument("job_args", nargs="*", help="extra `c2f label` flags, after --")
    args = ap.parse_args()
    tree = make_inputs(Path(args.cache), args.images)
    files = sorted(str(p) for p in tree.glob("*/*.JPEG"))
    print(f"{len(files)} inputs in {tree} ({os.getloadavg()[0]:.1f} load average)", flush=True)
    base = [baseline(files)]
    for r in range(args.rounds):
        job, job_cpu, out = run_job(tree, len(files), args.job_args)
        base.append(baseline(files))
        ref, ref_cpu = np.mean(base[-2:], axis=0)
        print(
            f"round {r + 1}: decode, 2 processes {'':14} {ref:7.1f} images/s ({base[-2][0]:.0f}, {base[-1][0]:.0f}), "
            f"{ref_cpu:.2f} CPU ms/image"
        )
        print(
            f"round {r + 1}: c2f label --preset empty {'':7} {job:7.1f} images/s, {job_cpu:.2f} CPU ms/image   "
            f"ratio {job / ref:.2f} (rates; target >= 0.5), {ref_cpu / job_cpu:.2f} (CPU per image)"
        )
        for line in out.splitlines():
            if line.startswith(("done:", "time per image")):
                print(f"    {line}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
