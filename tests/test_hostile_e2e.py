"""End to end: `c2f label` with the tiny presets on a tree that mixes good photos with hostile inputs
of every class the issue names. The job exits 0; every good photo is in exactly one shard, byte for
byte, with its class; every hostile input is in quarantine.jsonl once, with the reason expected of
it; hidden entries are nowhere; and the whole job (driver + Ray processes) stays under 3 GB RSS."""

import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import hostile
import numpy as np
import psutil
import pytest
from PIL import Image

from pipelines.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
GOOD_CLASSES = ("n01000001", "n01000002", "n01000003")


def good_photos(root: Path, elsewhere: Path) -> dict[str, str]:
    """Crops of the bundled photos as plain JPEGs: {source relative to root: synset}. Class
    n01000003 is a symlink to a folder outside the root; one name is not valid UTF-8."""
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((REPO / "samples/train").glob("*/*.JPEG"))]
    good = {}
    for i in range(12):
        syn = GOOD_CLASSES[i % 3]
        base = (elsewhere if syn == "n01000003" else root) / syn
        base.mkdir(parents=True, exist_ok=True)
        im = photos[i % len(photos)]
        y, x = (i * 37) % (im.shape[0] - 150), (i * 53) % (im.shape[1] - 200)
        data = hostile.encode(im[y : y + 150, x : x + 200], "JPEG", quality=90)
        name = f"{syn}_{i:03d}.JPEG"
        if i == 4:
            name = f"{syn}_caf\udce9.JPEG"  # Latin-1 bytes in the name
        (base / name).write_bytes(data)
        good[f"{syn}/{name}"] = syn
    (root / "n01000003").symlink_to(elsewhere / "n01000003")
    extra = root / "n01000001" / "n01000001_exif9.JPEG"
    extra.write_bytes(hostile.exif_jpeg(9))  # an invalid EXIF tag costs nothing
    good["n01000001/n01000001_exif9.JPEG"] = "n01000001"
    return good


def hostile_inputs(root: Path) -> dict[str, tuple[str, str]]:
    """Writes the hostile inputs; {source: (stage, reason prefix)} expected in quarantine.jsonl."""
    c = root / "n01000002"
    files = {
        "empty.JPEG": (b"", "decode", "empty file (0 bytes)"),
        "truncated.JPEG": (hostile.jpeg(120, 160)[:2500], "decode", "decode failed: OSError"),
        "html.JPEG": (b"<html><body>403 Forbidden</body></html>", "decode", "not a decodable image"),
        "soi-only.JPEG": (b"\xff\xd8", "decode", "not a decodable image"),
        "eps.JPEG": (hostile.EPS, "decode", "format EPS refused"),
        "psd.JPEG": (hostile.psd(), "decode", "format PSD refused"),
        "ico.JPEG": (hostile.ico(), "decode", "format ICO refused"),
        "sgi.JPEG": (hostile.encode(hostile.photo(), "SGI"), "decode", "format SGI refused"),
        "jpeg-9000.JPEG": (hostile.jpeg_declaring(9000, 9000), "decode", "too large: JPEG declares 9000x9000"),
        "png-12000.JPEG": (hostile.png_declaring(12000, 6000), "decode", "too large: PNG declares 12000x6000"),
        "gif-8000.JPEG": (hostile.gif_declaring(8000, 8000), "decode", "too large: GIF declares 8000x8000"),
        "png-bomb.JPEG": (hostile.png_declaring(40000, 40000), "decode", "too large (decompression-bomb guard)"),
        "tiff-type.JPEG": (hostile.tiff_strip_offsets_typed(2), "decode", "decode failed: TypeError"),
        "tiff-overflow.JPEG": (hostile.tiff_strip_offset_overflow(), "decode", "decode failed: OverflowError"),
        "png-text-bomb.JPEG": (hostile.png_text_bomb(), "decode", "decode failed: ValueError"),
    }
    expected = {}
    for name, (data, stage, reason) in files.items():
        (c / f"n01000002_{name}").write_bytes(data)
        expected[f"n01000002/n01000002_{name}"] = (stage, reason)
    with open(c / "n01000002_huge.JPEG", "wb") as f:
        f.truncate(100 << 20)  # sparse: costs no disk
    expected["n01000002/n01000002_huge.JPEG"] = ("read", f"file of {100 << 20} bytes exceeds --max-input-bytes")
    os.mkfifo(c / "n01000002_fifo.JPEG")
    expected["n01000002/n01000002_fifo.JPEG"] = ("plan", "not a regular file (FIFO)")
    (c / "n01000002_zero.JPEG").symlink_to("/dev/zero")
    expected["n01000002/n01000002_zero.JPEG"] = ("plan", "not a regular file (character device)")
    (c / "n01000002_dangling.JPEG").symlink_to(root / "gone.JPEG")
    expected["n01000002/n01000002_dangling.JPEG"] = ("plan", "broken symlink")
    (c / "loop").symlink_to(root)
    expected["n01000002/loop"] = ("plan", "symlink loop")
    (root / "stray.jpg").write_bytes(hostile.jpeg())
    expected["stray.jpg"] = ("plan", "outside the ImageNet layout")
    (c / "nested.JPEG").mkdir()
    (c / "nested.JPEG" / "inner.JPEG").write_bytes(hostile.jpeg())
    expected["n01000002/nested.JPEG/inner.JPEG"] = ("plan", "outside the ImageNet layout")
    # ignored, not refused: hidden entries
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "n01000001_000-checkpoint.JPEG").write_bytes(hostile.jpeg())
    (c / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return expected


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants (the driver, Ray's GCS and
    raylet, the labeling actor, the shard tasks) every 50 ms."""

    def __init__(self, pid: int):
        self.proc, self.peak, self.most_procs = psutil.Process(pid), 0, 0
        self.at_peak: list[str] = []  # "RSS MiB  name" of each process when the sum peaked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            sizes = []
            for p in procs:
                try:
                    sizes.append((p.memory_info().rss, p.name()))
                except psutil.Error:
                    pass
            total = sum(r for r, _ in sizes)
            if total > self.peak:
                self.peak, self.at_peak = total, [f"{r >> 20:6d} MiB  {n}" for r, n in sorted(sizes, reverse=True)]
            self.most_procs = max(self.most_procs, len(procs))
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_label_mixed_tree_with_tiny_preset(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    good = good_photos(root, tmp_path / "elsewhere")
    expected = hostile_inputs(root)
    assert len(expected) >= 20

    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [sys.executable, "-m", "c2f", "label", str(root), str(out), "--preset", "tiny-random"]
    proc = subprocess.Popen(
        [*cmd, "--samples-per-shard", "8", "--batch-size", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rss = PeakRSS(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        rss.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "OK:" in stdout and "Traceback" not in stderr

    plan = make_plan(root, 8)
    classes = {syn: i for i, syn in enumerate(plan.classes)}
    assert set(GOOD_CLASSES) <= set(classes)
    key_of = {it.source: it.key for it in plan.items}
    members: dict[str, dict[str, bytes]] = {}
    seen: dict[str, int] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(ti).read()
                if ext == "jpg":
                    seen[key] = seen.get(key, 0) + 1

    for source, syn in good.items():  # in exactly one shard, byte for byte, with its class
        key = key_of[source]
        real = root / source
        assert seen.get(key) == 1, source
        assert members[key]["jpg"] == real.read_bytes(), source
        assert int(members[key]["cls"]) == classes[syn]
        meta = json.loads(members[key]["json"])
        assert meta["class"] == {"index": classes[syn], "synset": syn} and meta["source"] == source

    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    by_source = {}
    for q in quarantine:
        assert q["source"] not in by_source, f"{q['source']} quarantined twice"
        by_source[q["source"]] = q
    assert set(by_source) == set(expected)  # every hostile input, and nothing else
    for source, (stage, reason) in expected.items():
        q = by_source[source]
        assert (q["stage"], q["reason"][: len(reason)]) == (stage, reason), q
        assert q["key"] not in seen
    assert seen.keys() == {key_of[s] for s in good}  # nothing but the good photos in the shards
    assert not any("ipynb" in s or "DS_Store" in s for s in [*by_source, *key_of])  # hidden: ignored

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["quarantined"] == len(expected) and manifest["plan"]["skipped"] == 6
    at_peak = "\n".join(rss.at_peak)
    print(f"peak RSS of the whole job: {rss.peak / 2**30:.2f} GiB over up to {rss.most_procs} processes\n{at_peak}")
    assert rss.most_procs >= 4  # the sampling saw Ray's processes, not just the driver
    assert rss.peak < 3 * 2**30, at_peak
