"""Read shards for training: webdataset stream -> decoded tensors -> joint augmentation.

    urls -> (split by node, split by worker | resample) -> tar samples (shards.tar: bounded)
         -> shuffle buffer -> decode (our handlers for the masks) -> joint transform -> sample dict

Sample dict: `image` [3, H, W] uint8, `semantic` [H, W] int64, `instance` [H, W] int64,
`cls` int (-1 when the dataset has no classes), `meta` (the sample JSON), `__key__`.

webdataset's stock image decoders are wrong for masks (`l8` squashes 16-bit instance ids to
8 bits, `rgb8` triples a one-channel map), so `.sem.png` and `.inst.png` have their own handlers
that keep the stored ids exactly.
"""

from __future__ import annotations

import functools
import glob
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import format as fmt
from .errors import first_line
from .image import jpeg_size
from .location import is_local, list_shards, local_path, open_url
from .manifest import load_json
from .png import check_pixels, decode_mask_fast, grayscale_header
from .tar import TarError, group_samples, tar_members

# torchvision 0.29 marks its decoders deprecated in favour of torchcodec; they remain the fastest
# libjpeg-turbo path available with no extra dependency.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)


def _decode_mask(data: bytes, max_pixels: int = fmt.MAX_PIXELS) -> np.ndarray:
    """PNG -> [H, W] uint8 or uint16, ids untouched: the zlib-ng fast path for maps c2f wrote
    (shards.png), else libpng through torchvision (~1.4x PIL). Bounded: the IHDR's size is checked
    against `max_pixels` before either decoder starts."""
    from torchvision.io import decode_png

    fast = decode_mask_fast(data, max_pixels)
    if fast is not None:
        return fast
    grayscale_header(data)
    m = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if m.shape[0] != 1:
        raise ValueError(f"mask PNG has {m.shape[0]} channels, expected 1")
    return m[0].numpy()


def _decode_rgb(data: bytes, max_pixels: int = fmt.MAX_PIXELS) -> torch.Tensor:
    """JPEG -> [3, H, W] uint8 with libjpeg-turbo; the frame header's size is checked against
    `max_pixels` first, so a small member that declares 60000x60000 allocates nothing."""
    from torchvision.io import ImageReadMode, decode_jpeg

    size = jpeg_size(data)
    if size is None:
        raise ValueError("not a JPEG with a frame header")
    check_pixels(*size, max_pixels, "JPEG")
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


class SampleError(ValueError):
    """A sample that does not decode; the message names its shard and key."""


def decode_sample(
    sample: dict[str, Any], as_tensors: bool = True, masks: bool = True, max_pixels: int = fmt.MAX_PIXELS
) -> dict[str, Any]:
    """Raw tar members (bytes by extension) -> decoded sample. Works on webdataset and wids samples.

    With `as_tensors=False` the masks stay numpy uint8/uint16 at full size, which is what
    `JointTransform` wants (it converts only the crop); `masks_to_tensors` finishes the job.
    With `masks=False` the maps are not decoded at all (RGB-only consumers: probes, baselines).
    Every decode is bounded by `max_pixels` (docs/FORMAT.md, "What readers refuse")."""
    try:
        meta = sample[fmt.META]
        meta = load_json(meta, ".json") if isinstance(meta, (bytes, bytearray)) else meta
        out = {
            "__key__": sample.get("__key__"),
            "image": _decode_rgb(sample[fmt.JPG], max_pixels),
            "cls": class_index(sample),
            "meta": meta,
        }
        if masks:
            out["semantic"] = _decode_mask(sample[fmt.SEM], max_pixels)
            out["instance"] = _decode_mask(sample[fmt.INST], max_pixels)
    except Exception as e:  # noqa: BLE001 - re-raised with the sample's address
        raise sample_error(sample, e) from e
    return masks_to_tensors(out) if as_tensors else out


def class_index(sample: dict[str, Any]) -> int:
    """The sample's `.cls` as an int (-1 when it has none); ValueError when it is not an index."""
    cls = sample.get(fmt.CLS)
    if cls is None:
        return -1
    raw = cls.encode() if isinstance(cls, str) else bytes(cls)
    if not (1 <= len(raw) <= 9 and raw.isdigit()):
        raise ValueError(f".cls {raw[:20]!r} is not a class index")
    return int(raw)


def sample_error(sample: dict[str, Any], e: BaseException) -> SampleError:
    """`e` as a SampleError naming the sample's shard and key, in one line."""
    where = f"{sample.get('__url__', '?')} key {sample.get('__key__', '?')}"
    return SampleError(f"{where}: {first_line(e, typed=True)}")


def masks_to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """numpy uint8/uint16 masks -> int64 tensors (uint16 has no arithmetic in torch)."""
    if "semantic" not in sample:
        return sample
    return {
        **sample,
        "semantic": torch.from_numpy(sample["semantic"].astype(np.int64)),
        "instance": torch.from_numpy(sample["instance"].astype(np.int64)),
    }


@dataclass
class JointTransform:
    """RandomResizedCrop(size, scale) + horizontal flip, one draw applied to the image and both masks.

    The crop box is drawn by torchvision's own RandomResizedCrop.get_params and the image is
    resized with torchvision (bilinear, antialiased). Masks are resampled by nearest neighbour
    at the same pixel centres (`src = start + (dst + 0.5) * h / size`) with a numpy gather on the
    stored uint8/uint16 arrays: ids are never blended, and this is ~10x cheaper than pushing
    int64 masks through `v2.Resize`, which converts them to float and back (bench_reader.py).
    """

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        import torchvision.transforms.v2.functional as F
        from torchvision.transforms import RandomResizedCrop

        img = sample["image"]
        top, left, h, w = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        img = F.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
        rows = top + np.minimum(((np.arange(self.size) + 0.5) * (h / self.size)).astype(np.int64), h - 1)
        cols = left + np.minimum(((np.arange(self.size) + 0.5) * (w / self.size)).astype(np.int64), w - 1)
        if self.flip and torch.rand(1).item() < 0.5:
            img, cols = img.flip(-1), cols[::-1]
        if "semantic" not in sample:  # an RGB-only stream
            return {**sample, "image": img}
        sem, inst = np.asarray(sample["semantic"]), np.asarray(sample["instance"])
        if sem.shape != tuple(sample["image"].shape[1:]) or inst.shape != sem.shape:
            raise SampleError(f"{sample.get('__key__')}: masks {sem.shape}/{inst.shape} differ from image")
        return {**sample, "image": img, "semantic": sem[rows][:, cols], "instance": inst[rows][:, cols]}


def expand_urls(source: str | list[str]) -> list[str]:
    """A shard directory (local or any fsspec URL), a local glob, a brace pattern
    (`s3://b/c2f-{000000..000099}.tar`) or a list."""
    if isinstance(source, list):
        return source
    shards = list_shards(source)
    if shards is not None:
        if not shards:
            raise FileNotFoundError(f"no shards in {source}")
        return shards
    if is_local(source) and any(c in source for c in "*?["):
        return sorted(glob.glob(local_path(source)))
    import braceexpand

    return list(braceexpand.braceexpand(source))


def _opener(urls):
    """webdataset stage: {url} -> {url, stream} (local paths, file://, s3://, gs://, …)."""
    for sample in urls:
        yield {**sample, "stream": open_url(sample["url"])}


def tar_expander(sources, handler: Callable[[Exception], bool]):
    """webdataset stage: {url, stream} -> one dict of raw members per sample, with `__key__` and
    `__url__`. It replaces webdataset's tar_file_expander + group_by_keys with the bounded path
    of shards.tar: members over the size cap, sparse or non-regular ones are never read, and
    names with `..` or an absolute path, keys that break the key rules and repeated keys are
    errors naming the shard and the key (through `handler`: raise, or skip and go on). Members that
    are not part of the format (`KEY.__key__`, which would rename the sample) are dropped."""
    for source in sources:
        url = source["url"]

        def report(key: str | None, code: str, message: str, url=url) -> None:
            if code == "unexpected-member":
                return  # dropped: it can neither rename a sample nor be decoded as one
            err = SampleError(f"{url} key {key or '?'}: {code}: {message}")
            if not handler(err):
                raise err

        stream = source["stream"]
        try:
            for key, members in group_samples(tar_members(io.BufferedReader(stream, 1 << 20)), report):
                yield {**members, "__key__": key, "__url__": url}
        except TarError as e:
            err = SampleError(f"{url}: {e}")
            if not handler(err):
                raise err from None
        finally:
            stream.close()


def shard_samples(url: str, handler: Callable[[Exception], bool] | None = None, members: tuple[str, ...] | None = None):
    """Raw samples (member bytes by extension, `__key__`, `__url__`) of one shard, read through
    the bounded `tar_expander`; the stream is closed when the generator is (also when a consumer
    stops early). `members`: keep only these extensions."""
    import webdataset as wds

    handler = handler or wds.reraise_exception
    for sample in tar_expander(iter([{"url": url, "stream": open_url(url)}]), handler):
        if members is not None:
            sample = {k: v for k, v in sample.items() if k.startswith("__") or k in members}
        yield sample


def interleave(urls, k: int, rng, handler: Callable[[Exception], bool] | None = None):
    """Raw samples of `urls` (an iterable of URLs, or of webdataset `{"url": ...}` dicts) with `k`
    shards open at once: each next sample comes from a random open shard (`rng`, a random.Random),
    and a finished shard is replaced by the next URL. Shards written in class order (one class
    each) then still give batches of many classes; k=1 reads one shard after the other."""
    pending = (u["url"] if isinstance(u, dict) else u for u in urls)
    live: list = []
    try:
        while True:
            while len(live) < k and (url := next(pending, None)) is not None:
                live.append(shard_samples(url, handler))
            if not live:
                return
            i = rng.randrange(len(live))
            sample = next(live[i], None)
            if sample is None:
                live.pop(i).close()
            else:
                yield sample
    finally:
        for it in live:
            it.close()


class DisjointShards(torch.utils.data.IterableDataset):
    """webdataset stage: this rank's and this worker's share of the shards (disjoint from every
    other rank and worker), in a seeded order, once or forever (`repeat`, reshuffled each pass)."""

    def __init__(self, urls: list[str], seed: int, shuffle: bool, repeat: bool):
        self.urls, self.seed, self.shuffle, self.repeat = urls, seed, shuffle, repeat

    def __iter__(self):
        import itertools
        import random

        from webdataset.utils import pytorch_worker_info

        rank, world, worker, workers = pytorch_worker_info()
        mine = self.urls[rank * workers + worker :: world * workers]
        if not mine and self.repeat:
            raise ValueError(
                f"{len(self.urls)} shards cannot be split over {world} ranks x {workers} workers: "
                "use fewer DataLoader workers or a resampled stream"
            )
        for epoch in itertools.count() if self.repeat else range(1):
            order = list(mine)
            if self.shuffle:
                random.Random(f"{self.seed}:{rank}:{worker}:{epoch}").shuffle(order)
            for url in order:
                yield {"url": url}


def make_dataset(
    source: str | list[str],
    transform: Callable[[dict], dict] | None = None,
    shuffle: int = 1000,
    resampled: bool = False,
    seed: int = 0,
    handler: Callable[[Exception], bool] | None = None,
    repeat: bool = False,
    masks: bool = True,
    subset: str | None = None,
    interleave_shards: int = 1,
    max_pixels: int = fmt.MAX_PIXELS,
):
    """An `IterableDataset` over the shards for `torch.utils.data.DataLoader`.

    Without `resampled`, shards are split disjointly between DDP ranks and DataLoader workers
    and each sample is seen once per pass; `repeat` makes that an infinite stream of passes,
    reshuffled each time. With `resampled`, each worker draws shards with replacement forever.
    Infinite streams get a fixed epoch length from the consumer (a step count). `handler`
    decides what a bad sample does (default: raise, naming the shard). `masks=False` skips the
    maps entirely (an RGB-only stream of the same shards). `subset`: a file from `c2f filter` (or
    any key list, one per line): only those samples, and only the shards that hold them, are read.
    `interleave_shards` > 1 reads that many shards at once per worker, mixing their samples
    (see `interleave`). Reading is bounded: members over 64 MiB, sparse members, unsafe names, and
    images or maps declaring more than `max_pixels` are errors naming the shard and key
    (docs/FORMAT.md, "What readers refuse").
    """
    import webdataset as wds
    from webdataset import filters, shardlists

    handler = handler or wds.reraise_exception
    urls = expand_urls(source)
    keep = None
    if subset:
        from .subset import subset_for_stream

        urls, keep = subset_for_stream(subset, urls, str(source), repeating=repeat or resampled)
    stages: list[Any] = []
    if resampled:
        stages.append(shardlists.ResampledShards(urls, seed=seed, deterministic=True))
    else:
        stages.append(DisjointShards(urls, seed, shuffle=bool(shuffle), repeat=repeat))
    if interleave_shards > 1:
        import random

        rng = random.Random(f"interleave:{seed}")
        stages.append(lambda src: interleave(src, interleave_shards, rng, handler))
    else:
        stages += [_opener, functools.partial(tar_expander, handler=handler)]
    if keep is not None:
        stages.append(filters.select(keep.wants))  # before the shuffle buffer and any decoding
    if shuffle:
        stages.append(filters.shuffle(shuffle, initial=min(shuffle, 100), seed=seed))
    decode = functools.partial(decode_sample, as_tensors=False, masks=masks, max_pixels=max_pixels)
    stages.append(filters.map(decode, handler=handler))
    if transform is not None:
        stages.append(filters.map(transform, handler=handler))
    stages.append(filters.map(masks_to_tensors, handler=handler))
    return wds.DataPipeline(*stages)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-size samples (after the joint transform) into a batch; metadata stays a list."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "semantic": torch.stack([s["semantic"] for s in samples]),
        "instance": torch.stack([s["instance"] for s in samples]),
        "cls": torch.tensor([s["cls"] for s in samples]),
        "meta": [s["meta"] for s in samples],
        "__key__": [s["__key__"] for s in samples],
    }
