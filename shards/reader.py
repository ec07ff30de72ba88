"""Read shards for training: webdataset stream -> decoded tensors -> joint augmentation.

    urls -> (split by node, split by worker | resample) -> tar samples -> shuffle buffer
         -> decode (our handlers for the masks) -> joint transform -> sample dict

Sample dict: `image` [3, H, W] uint8, `semantic` [H, W] int64, `instance` [H, W] int64,
`cls` int (-1 when the dataset has no classes), `meta` (the sample JSON), `__key__`.

webdataset's stock image decoders are wrong for masks (`l8` squashes 16-bit instance ids to
8 bits, `rgb8` triples a one-channel map), so `.sem.png` and `.inst.png` have their own handlers
that keep the stored ids exactly.
"""

from __future__ import annotations

import functools
import glob
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import format as fmt
from .pack import decode_png


# torchvision 0.29 marks its decoders deprecated in favour of torchcodec; they remain the fastest
# libjpeg-turbo path available with no extra dependency.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)


def _decode_mask(data: bytes) -> torch.Tensor:
    return torch.from_numpy(decode_png(data).astype(np.int64))


def _decode_rgb(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


class SampleError(ValueError):
    """A sample that does not decode; the message names its shard and key."""


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw tar members (bytes by extension) -> tensors. Works on webdataset and wids samples."""
    import json

    try:
        meta = sample[fmt.META]
        meta = json.loads(meta) if isinstance(meta, (bytes, bytearray)) else meta
        cls = sample.get(fmt.CLS)
        return {
            "__key__": sample.get("__key__"),
            "image": _decode_rgb(sample[fmt.JPG]),
            "semantic": _decode_mask(sample[fmt.SEM]),
            "instance": _decode_mask(sample[fmt.INST]),
            "cls": int(cls) if cls is not None else -1,
            "meta": meta,
        }
    except Exception as e:  # noqa: BLE001 - re-raised with the sample's address
        where = f"{sample.get('__url__', '?')} key {sample.get('__key__', '?')}"
        raise SampleError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0]}") from e


@dataclass
class JointTransform:
    """RandomResizedCrop + horizontal flip applied identically to the image and both masks.

    torchvision.transforms.v2 draws one set of parameters per call and resizes `tv_tensors.Mask`
    with nearest-neighbour, so ids are never blended and stay pixel-aligned with the RGB.
    """

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True

    def __post_init__(self):
        from torchvision.transforms import v2

        ops = [v2.RandomResizedCrop(self.size, scale=self.scale, antialias=True)]
        if self.flip:
            ops.append(v2.RandomHorizontalFlip())
        self._t = v2.Compose(ops)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from torchvision import tv_tensors

        img, sem, inst = self._t(
            tv_tensors.Image(sample["image"]), tv_tensors.Mask(sample["semantic"]), tv_tensors.Mask(sample["instance"])
        )
        return {**sample, "image": img.as_subclass(torch.Tensor), "semantic": sem.as_subclass(torch.Tensor),
                "instance": inst.as_subclass(torch.Tensor)}


def expand_urls(source: str | list[str]) -> list[str]:
    """A shard directory, a glob, a brace pattern (`s3://b/c2f-{000000..000099}.tar`) or a list."""
    if isinstance(source, list):
        return source
    if "://" not in source or source.startswith("file://"):
        path = source[len("file://"):] if source.startswith("file://") else source
        if os.path.isdir(path):
            urls = sorted(glob.glob(os.path.join(path, "*.tar")))
            urls = [u for u in urls if fmt.parse_shard_name(u)]
            if not urls:
                raise FileNotFoundError(f"no shards in {path}")
            return ["file://" + os.path.abspath(u) for u in urls] if source.startswith("file://") else urls
        if any(c in path for c in "*?["):
            return sorted(glob.glob(path))
    import braceexpand

    return list(braceexpand.braceexpand(source))


def _fsspec_opener(urls):
    """webdataset stage: open each url with fsspec (local paths, file://, s3://, gs://, …)."""
    import fsspec

    for sample in urls:
        url = sample["url"]
        stream = fsspec.open(url, "rb").open()
        yield {**sample, "stream": stream}


def make_dataset(
    source: str | list[str],
    transform: Callable[[dict], dict] | None = None,
    shuffle: int = 1000,
    resampled: bool = False,
    seed: int = 0,
    handler: Callable[[Exception], bool] | None = None,
):
    """An `IterableDataset` over the shards for `torch.utils.data.DataLoader`.

    Without `resampled`, shards are split disjointly between DDP ranks (`split_by_node`) and
    DataLoader workers (`split_by_worker`) and each sample is seen once per pass. With
    `resampled`, each worker draws shards with replacement forever (an infinite stream; fix
    the epoch length with `.with_epoch(n)`). `handler` decides what a bad sample does
    (default: raise, naming the shard).
    """
    import webdataset as wds
    from webdataset import filters, shardlists, tariterators

    handler = handler or wds.reraise_exception
    urls = expand_urls(source)
    stages: list[Any] = []
    if resampled:
        stages.append(shardlists.ResampledShards(urls, seed=seed, deterministic=True))
    else:
        stages += [shardlists.SimpleShardList(urls), shardlists.split_by_node, shardlists.split_by_worker]
        if shuffle:
            stages.append(filters.shuffle(len(urls), initial=len(urls), seed=seed))
    stages += [
        filters.pipelinefilter(_fsspec_opener)(),
        functools.partial(tariterators.tar_file_expander, handler=handler),
        functools.partial(tariterators.group_by_keys, handler=handler),
    ]
    if shuffle:
        stages.append(filters.shuffle(shuffle, initial=min(shuffle, 100), seed=seed))
    stages.append(filters.map(decode_sample, handler=handler))
    if transform is not None:
        stages.append(filters.map(transform, handler=handler))
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
