"""A labeling job at ImageNet's count: the driver's memory and its fixed costs, planning and resuming.

Builds (once, cached) a tree of 1,281,167 tiny valid JPEGs in 1,000 synset folders, the shape of
ImageNet-1K's train split; labels it with `c2f label --preset empty --no-validate`; kills the
driver and its local Ray halfway (as when its node dies); reruns the same command, which resumes;
then runs `c2f validate` on the result. The images are tiny, so what it measures is what does not
depend on pixels: listing and planning, the driver's bookkeeping, Ray's scheduling, resuming.

Printed, for both runs: plan time (start to the `plan:` line), driver peak RSS (the `c2f label`
process alone: its kernel high-water mark, /proc/PID/status VmHWM, polled with psutil's view of
the process as the fallback), job rate; for the resume, the time to its first new shard; then
the validation rate. The load average is printed with each run: the machine may be shared.

    .venv/bin/python bench/bench_scale.py [--images 1281167] [--code DIR] [-- c2f label flags]

`--code DIR` runs another checkout's `c2f` (PYTHONPATH=DIR): the same bench on older code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IMAGENET_TRAIN = 1_281_167
CLASSES = 1000


def _tiny_jpegs(variants: int = 16) -> list[bytes]:
    """Small valid JPEGs (16x12, ~700 bytes): a few variants so that shards are not all one file."""
    out = []
    for v in range(variants):
        im = Image.new("RGB", (16, 12), ((37 * v) % 256, (91 * v) % 256, (151 * v) % 256))
        im.putpixel((v % 16, v % 12), (255, 255, 255))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def _synset(c: int) -> str:
    return f"n{1440764 + 7 * c:08d}"


def _write_class(args: tuple[str, int, int]) -> int:
    """One class folder: inputs i = c, c + 1000, c + 2000, … below n."""
    tree, c, n = args
    jpegs = _tiny_jpegs()
    syn = _synset(c)
    folder = os.path.join(tree, syn)
    os.makedirs(folder, exist_ok=True)
    count = 0
    for i in range(c, n, CLASSES):
        with open(os.path.join(folder, f"{syn}_{i}.JPEG"), "wb") as f:
            f.write(jpegs[i % len(jpegs)])
        count += 1
    return count


def make_tree(cache: Path, n: int) -> Path:
    """`<wnid>/<wnid>_<i>.JPEG` for i < n in 1,000 folders; made once per n."""
    tree, done = cache / f"scale-{n}", cache / f"scale-{n}.done"
    if done.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    t0 = time.perf_counter()
    with Pool(2) as pool:
        written = sum(pool.imap_unordered(_write_class, [(str(tree), c, n) for c in range(CLASSES)]))
    assert written == n, (written, n)
    secs = time.perf_counter() - t0
    done.write_text(f"{n} files in {CLASSES} folders, written in {secs:.0f}s\n")
    print(f"wrote {n:,} files in {CLASSES} folders in {secs:.0f}s", flush=True)
    return tree


def peak_rss(pid: int) -> int:
    """The process's peak resident set so far (bytes): the kernel's high-water mark where there is
    one (Linux), else its current RSS (the caller keeps the maximum)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return psutil.Process(pid).memory_info().rss


def count_done(out: Path) -> tuple[int, int]:
    """(finished shards, their planned inputs) from the stats files in `out`."""
    shards = images = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(out) as it:
        for e in it:
            if e.name.endswith(".stats.json"):
                with contextlib.suppress(OSError, ValueError):
                    images += json.loads(Path(e.path).read_bytes())["planned"]
                    shards += 1
    return shards, images


def count_stats(out: Path) -> int:
    with contextlib.suppress(FileNotFoundError), os.scandir(out) as it:
        return sum(1 for e in it if e.name.endswith(".stats.json"))
    return 0


class Run:
    """`c2f label` as a subprocess: its output lines with their times, its peak RSS, and a kill
    of the whole process tree (driver and local Ray) when `stop_at` shards are done."""

    def __init__(self, cmd: list[str], env: dict, out: Path, stop_at: int | None = None):
        self.out, self.stop_at = out, stop_at
        self.t0 = time.perf_counter()
        # Run from the checkout: `python -m` puts the working directory first on sys.path.
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[tuple[float, str]] = []
        self.rss = 0
        self.killed_at: float | None = None
        self.first_new: float | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter() - self.t0, line.rstrip("\n")))

    def at(self, prefix: str) -> float | None:
        return next((t for t, line in self.lines if line.startswith(prefix)), None)

    def line(self, prefix: str) -> str | None:
        return next((line for _, line in self.lines if line.startswith(prefix)), None)

    def wait(self, done_before: int) -> int:
        next_count = 0.0
        while self.proc.poll() is None:
            with contextlib.suppress(psutil.Error, OSError):
                self.rss = max(self.rss, peak_rss(self.proc.pid))
            now = time.perf_counter()
            if now >= next_count and (self.first_new is None or self.stop_at is not None):
                n = count_stats(self.out)
                if self.first_new is None and n > done_before:
                    self.first_new = now - self.t0
                if self.stop_at is not None and n >= self.stop_at:
                    self.kill()
                    break
                next_count = now + 0.5
            time.sleep(0.1)
        self.proc.wait()
        self.reader.join(10)
        return self.proc.returncode

    def kill(self) -> None:
        """The driver and its local Ray die at once, as when their node dies."""
        self.killed_at = time.perf_counter() - self.t0
        tree = [psutil.Process(self.proc.pid)]
        with contextlib.suppress(psutil.Error):
            tree += tree[0].children(recursive=True)
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree[1:], timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=IMAGENET_TRAIN)
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "c2f-bench-inputs"))
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose `c2f` runs (default: this one)")
    ap.add_argument("--keep", action="store_true", help="keep the output directory")
    ap.add_argument("--no-validate", dest="validate", action="store_false", help="skip `c2f validate` at the end")
    ap.add_argument("job_args", nargs="*", help="extra `c2f label` flags, after --")
    args = ap.parse_args()

    tree = make_tree(Path(args.cache), args.images)
    shards = -(-args.images // args.samples_per_shard)
    work = Path(tempfile.mkdtemp(prefix="c2f-bench-scale-"))
    out = work / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(args.code).resolve()),
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    cmd = [sys.executable, "-m", "c2f", "label", str(tree), str(out), "--preset", "empty", "--no-validate"]
    cmd += ["--samples-per-shard", str(args.samples_per_shard), *args.job_args]
    code = subprocess.run(["git", "-C", args.code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"{args.images:,} inputs in {tree}, {shards} shards; code {args.code} ({code.stdout.strip()})")
    try:
        print(f"run 1 (killed at {shards // 2} shards), load average {os.getloadavg()[0]:.1f}", flush=True)
        first = Run(cmd, env, out, stop_at=shards // 2)
        rc = first.wait(0)
        if first.killed_at is None:
            raise SystemExit(f"run 1 ended ({rc}) before it was killed:\n" + "\n".join(x for _, x in first.lines))
        done_shards, done_images = count_done(out)
        t_plan1 = first.at("plan:")
        # Rate of run 1: the inputs of its finished shards from the end of planning to the kill.
        rate1 = done_images / max(1e-9, first.killed_at - (t_plan1 or 0.0))

        print(f"run 2 (resume), load average {os.getloadavg()[0]:.1f}", flush=True)
        second = Run(cmd, env, out)
        rc = second.wait(done_shards)
        secs2 = time.perf_counter() - second.t0
        text = "\n".join(x for _, x in second.lines)
        if rc != 0:
            raise SystemExit(f"the resumed run failed ({rc}):\n{text[-5000:]}")
        if f"{done_shards} already done" not in text:
            raise SystemExit(f"the resumed run did not resume {done_shards} shards:\n{text[-5000:]}")
        t_plan2 = second.at("plan:")
        labeled = args.images - done_images
        rate2 = labeled / max(1e-9, (second.at("done:") or secs2) - (t_plan2 or 0.0))

        m, vsecs, check = None, 0.0, None
        if args.validate:
            print(f"validate, load average {os.getloadavg()[0]:.1f}", flush=True)
            vcmd = [sys.executable, "-m", "c2f", "validate", str(out), "--workers", "2", "--no-progress"]
            check = Run(vcmd, env, out)
            rc = check.wait(shards)
            vsecs = time.perf_counter() - check.t0
            vtext = "\n".join(x for _, x in check.lines)
            if rc != 0 or "OK:" not in vtext:
                raise SystemExit(f"validate failed ({rc}):\n{vtext[-5000:]}")
            m = re.search(r"OK: (\d+) shards, (\d+) samples", vtext)
            if not m or int(m.group(2)) != args.images:
                raise SystemExit(f"validate did not find all {args.images} samples:\n{vtext[-2000:]}")

        mb = 1 / 2**20
        print()
        print(
            f"run 1: plan {t_plan1:.1f} s; killed at {first.killed_at:.1f} s with {done_shards} shards "
            f"({done_images:,} images) done; {rate1:,.0f} images/s after planning; "
            f"driver peak RSS {first.rss * mb:,.0f} MiB"
        )
        print(
            f"run 2: plan {t_plan2:.1f} s (listing, plan, {done_shards} done shards checked); first new shard at "
            f"{second.first_new:.1f} s; {labeled:,} images labeled in {secs2:.1f} s, "
            f"{rate2:,.0f} images/s after planning; driver peak RSS {second.rss * mb:,.0f} MiB"
        )
        for line in (second.line("done:"), second.line("time per image")):
            if line:
                print(f"    {line}")
        if m and check:
            print(
                f"validate: {m.group(1)} shards, {int(m.group(2)):,} samples in {vsecs:.1f} s, "
                f"{args.images / vsecs:,.0f} samples/s (2 workers); main process peak RSS {check.rss * mb:,.0f} MiB"
            )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"output kept in {out}")


if __name__ == "__main__":
    main()
