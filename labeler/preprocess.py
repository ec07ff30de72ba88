"""Model inputs for a batch of images of any sizes, on the model's device, independent of the batch.

Each image is resized and normalised by its Hugging Face image processor's own torch functions
(`resize`, `rescale_and_normalize`: the same pixels the processor gives for that image alone) and
padded to a *canvas* that depends on the image only: the processor's fixed pad size where it has one
(EoMT pads to 640x640), else the resized size rounded up to `pad_multiple`. Images that share a canvas
share a forward pass. transformers' processors pad every image to the largest in the batch, so an
image's maps depend on its neighbours (transformers #39382); here they cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import LabelerLoadError


@dataclass(frozen=True)
class Placement:
    """Where one image sits in its model input."""

    size: tuple[int, int]  # original (H, W)
    resized: tuple[int, int]  # (h, w) of the image inside the canvas, at model resolution
    canvas: tuple[int, int]  # (h, w) of the padded model input

    def region(self, out_hw: tuple[int, int]) -> tuple[float, float]:
        """Extent of the image in a model output map of shape out_hw that covers the whole canvas."""
        return (self.resized[0] * out_hw[0] / self.canvas[0], self.resized[1] * out_hw[1] / self.canvas[1])

    def step(self, out_hw: tuple[int, int]) -> tuple[float, float]:
        """Output-map pixels per canvas pixel."""
        return (out_hw[0] / self.canvas[0], out_hw[1] / self.canvas[1])


@dataclass
class Group:
    index: list[int]  # positions in the batch
    placements: list[Placement]
    pixel_values: torch.Tensor  # [n, 3, ch, cw] float32
    pixel_mask: torch.Tensor  # [n, ch, cw] int64, 1 on image pixels


def bucket(side: int, multiple: int) -> int:
    """The smallest rung >= side of the ladder multiple x 2^(k/4), each rung rounded up to `multiple`:
    canvas sides for a compiled model (at multiple 32: ..., 512, 640, 736, 864, 1024, 1248, ...)."""
    k = max(0, math.floor(4 * math.log2(max(side, 1) / multiple)) - 1)
    while True:
        rung = math.ceil(multiple * 2 ** (k / 4) / multiple) * multiple
        if rung >= side:
            return rung
        k += 1


class HFPreprocessor:
    """[H, W, 3] uint8 tensors on the device -> canvas groups, as `processor(images=[one image])` would
    prepare each of them."""

    def __init__(self, processor, model_type: str, pad_multiple: int, buckets: bool = False):
        ip = getattr(processor, "image_processor", processor)  # OneFormer: processor + tokenizer
        for attr in ("resize", "rescale_and_normalize"):
            if not callable(getattr(ip, attr, None)):
                raise LabelerLoadError(
                    f"{type(ip).__name__} is not a torch (torchvision-backend) image processor; "
                    "c2f prepares images on the model's device with the processor's own torch functions"
                )
        if getattr(ip, "do_center_crop", False):
            raise LabelerLoadError(f"{type(ip).__name__}: center cropping would drop pixels that need labels")
        if getattr(ip, "do_split_image", False):
            raise LabelerLoadError(
                f"{type(ip).__name__}: sliding-window inference (do_split_image) is not supported; "
                "use a checkpoint whose processor pads (EoMT panoptic checkpoints do)"
            )
        self.ip = ip
        self.pad_multiple = max(1, pad_multiple)
        self.buckets = buckets
        # EoMT pads the resized uint8 image (black) before normalising; the others pad the normalised
        # image with zeros (the mean colour). Each mirrors its own processor.
        self.pad_first = model_type == "eomt"
        self.fixed_canvas = self._fixed_canvas(ip, model_type)
        self.resize_kwargs = {"size": ip.size, "resample": ip.resample}
        if getattr(ip, "size_divisor", None):  # Mask2Former/MaskFormer round the resized size up
            self.resize_kwargs["size_divisor"] = ip.size_divisor

    @staticmethod
    def _fixed_canvas(ip, model_type: str) -> tuple[int, int] | None:
        pad_size = getattr(ip, "pad_size", None)
        if pad_size is not None and getattr(pad_size, "height", None):
            return (pad_size.height, pad_size.width)
        if model_type == "eomt" and getattr(ip, "do_pad", False):
            return (ip.size.shortest_edge, ip.size.longest_edge or ip.size.shortest_edge)
        return None

    def _canvas(self, h: int, w: int) -> tuple[int, int]:
        if self.fixed_canvas is not None:
            ch, cw = self.fixed_canvas
            if h > ch or w > cw:
                raise ValueError(f"resized image {h}x{w} exceeds the processor's pad size {ch}x{cw}")
            return ch, cw
        m = self.pad_multiple
        if self.buckets:
            return (bucket(h, m), bucket(w, m))
        return (math.ceil(h / m) * m, math.ceil(w / m) * m)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        ip = self.ip
        return ip.rescale_and_normalize(
            x, ip.do_rescale, ip.rescale_factor, ip.do_normalize, tuple(ip.image_mean), tuple(ip.image_std)
        )

    def __call__(self, images: list[torch.Tensor]) -> list[Group]:
        """images: [H, W, 3] uint8 on the model's device."""
        prepared: dict[tuple[int, int], list] = {}
        for i, im in enumerate(images):
            x = im.permute(2, 0, 1)[None]  # [1, 3, H, W] uint8
            if self.ip.do_resize:
                x = self.ip.resize(image=x, **self.resize_kwargs)
            h, w = x.shape[-2:]
            canvas = self._canvas(h, w)
            pad = (0, canvas[1] - w, 0, canvas[0] - h)
            x = self._normalize(F.pad(x, pad)) if self.pad_first else F.pad(self._normalize(x), pad)
            placement = Placement(tuple(im.shape[:2]), (h, w), canvas)
            prepared.setdefault(canvas, []).append((i, placement, x[0]))
        groups = []
        for (ch, cw), items in prepared.items():
            mask = torch.zeros(len(items), ch, cw, dtype=torch.int64, device=items[0][2].device)
            for j, (_, p, _) in enumerate(items):
                mask[j, : p.resized[0], : p.resized[1]] = 1
            groups.append(
                Group([i for i, _, _ in items], [p for _, p, _ in items], torch.stack([x for _, _, x in items]), mask)
            )
        return groups
