"""Automatic mask generation for a batch of images, on the model's device.

What segment_anything's `SamAutomaticMaskGenerator` does per image, with these changes:
- one image-encoder pass for the batch (bf16 autocast and SDPA attention on CUDA);
- every image's point prompts go through the mask decoder together, `points_per_batch` at a time;
- the predicted-IoU and stability filters and the box NMS run on the decoder's low-resolution
  logits (256x256 for the public SAMs), NMS for all images at once keyed by image
  (`--sam-filter-resolution low`); the stock generator first upsamples every prompt's three masks to
  the full image. `full` filters exactly as the stock generator does;
- only the survivors are upsampled, straight to the image size, and painted into the overlap-resolved
  id map on the device (labeler/overlap.py); no run-length encoding round trip.
Not supported here (use `--sam-generator stock`): image crops (`crop_n_layers`) and the OpenCV
small-region clean-up (`min_mask_region_area`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import LabelerLoadError
from .config import SamConfig
from .postprocess import count_true
from .timing import StageClock

STABILITY_OFFSET = 1.0  # SamAutomaticMaskGenerator's default stability_score_offset


class BatchedSamInstances:
    def __init__(self, model, cfg: SamConfig, clock: StageClock | None = None):
        from segment_anything.utils.amg import build_point_grid

        if cfg.crop_n_layers:
            raise LabelerLoadError("--crop-n-layers needs --sam-generator stock (the batched generator has no crops)")
        if cfg.min_mask_region_area:
            raise LabelerLoadError("--min-mask-region-area needs --sam-generator stock (OpenCV clean-up per mask)")
        if cfg.sam_filter_resolution not in ("low", "full"):
            raise LabelerLoadError(f"--sam-filter-resolution must be low or full, not {cfg.sam_filter_resolution!r}")
        self.model, self.cfg = model, cfg
        self.device = next(model.parameters()).device
        self.clock = clock or StageClock(str(self.device))
        self.cuda = self.device.type == "cuda"
        self.size = model.image_encoder.img_size  # square model input (1024 for the public SAMs)
        # Same grid as the stock generator, in float64 as it computes prompt coordinates.
        self.grid = torch.as_tensor(build_point_grid(cfg.points_per_side), device=self.device)
        if self.cuda:
            from .sam_sdpa import use_sdpa

            use_sdpa(model.image_encoder)

    # --- model ---------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast("cuda", torch.bfloat16, enabled=self.cuda)

    def _prepare(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """[H, W, 3] uint8 on the device -> model input [B, 3, S, S] and each image's resized (h, w)."""
        from segment_anything.utils.transforms import ResizeLongestSide
        from torchvision.transforms.v2 import functional as tvF

        inputs, resized = [], []
        for im in images:
            h, w = im.shape[:2]
            rh, rw = ResizeLongestSide.get_preprocess_shape(h, w, self.size)
            x = im.permute(2, 0, 1)[None]
            if (rh, rw) != (h, w):
                # Antialiased bilinear on uint8, rounded back to uint8: what the stock path's PIL resize does.
                x = tvF.resize(x, [rh, rw], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
            inputs.append(self.model.preprocess(x.float()))  # normalise, pad to S x S
            resized.append((rh, rw))
        return torch.cat(inputs), resized

    def decode(self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
        """SAM's mask decoder for prompts of different images: features [n, C, e, e] (each prompt's
        image embedding), sparse [n, T, C], dense [n, C, e, e] -> (low-res logits [n, 3, 4e, 4e],
        predicted IoU [n, 3]) for the three multimask outputs. `MaskDecoder.forward` takes one image
        and repeats it per prompt; this is the same computation with the image chosen per prompt."""
        dec = self.model.mask_decoder
        n = sparse.shape[0]
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1), sparse], dim=1)
        src = features + dense
        pos = self.model.prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
        c, e_h, e_w = src.shape[1:]
        hs, src = dec.transformer(src, pos, tokens)
        iou_token, mask_tokens = hs[:, 0], hs[:, 1 : 1 + dec.num_mask_tokens]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(n, c, e_h, e_w))
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        s_h, s_w = upscaled.shape[-2:]
        masks = (hyper @ upscaled.flatten(2)).view(n, -1, s_h, s_w)
        iou = dec.iou_prediction_head(iou_token)
        return masks[:, 1:], iou[:, 1:]

    def _prompts(self, sizes, resized) -> torch.Tensor:
        """Point grid of every image in its model-input frame: [B, G, 2] float64 (x, y)."""
        out = []
        for (h, w), (rh, rw) in zip(sizes, resized, strict=True):
            pts = self.grid * torch.tensor([w, h], dtype=torch.float64, device=self.device)
            out.append(pts * torch.tensor([rw / w, rh / h], dtype=torch.float64, device=self.device))
        return torch.stack(out)

    def _decode_points(self, features, image_index, coords):
        """Prompts (image index [n], coords [n, 2]) -> low-res logits [n*3, s, s], IoU [n*3]."""
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=self.device)
        with self.clock.stage("forward"), torch.inference_mode(), self._autocast():
            sparse, dense = self.model.prompt_encoder(
                points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None
            )
            low, iou = self.decode(features[image_index], sparse, dense)
        return low.flatten(0, 1), iou.flatten().float()

    # --- filtering -------------------------------------------------------------------------------

    def _inside(self, image_index, regions, shape) -> torch.Tensor:
        """[m, s, s] bool: the low-res pixels of each mask that lie on its image (not on padding)."""
        s_h, s_w = shape
        rows = torch.tensor([r for r, _ in regions], device=self.device)[image_index]
        cols = torch.tensor([c for _, c in regions], device=self.device)[image_index]
        in_rows = torch.arange(s_h, device=self.device)[None, :] < rows[:, None]
        in_cols = torch.arange(s_w, device=self.device)[None, :] < cols[:, None]
        return in_rows[:, :, None] & in_cols[:, None, :]

    def _filter_low(self, low, iou, image_index, regions) -> torch.Tensor:
        """Predicted-IoU and stability filters on low-res logits [m, s, s] -> keep [m] bool."""
        logits = low.float()
        inside = self._inside(image_index, regions, logits.shape[-2:])
        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.cfg.pred_iou_thresh > 0:
            keep &= iou > self.cfg.pred_iou_thresh
        if self.cfg.stability_score_thresh > 0:
            high = count_true((logits > STABILITY_OFFSET) & inside)
            union = count_true((logits > -STABILITY_OFFSET) & inside)
            keep &= high / union >= self.cfg.stability_score_thresh
        return keep

    def _boxes_low(self, low, image_index, regions, sizes) -> torch.Tensor:
        """Boxes of low-res masks [k, s, s] in image pixels (XYXY, inclusive) -> [k, 4] float64."""
        from segment_anything.utils.amg import batched_mask_to_box

        inside = self._inside(image_index, regions, low.shape[-2:])
        box = batched_mask_to_box((low.float() > 0) & inside).double()
        rows = torch.tensor([r for r, _ in regions], dtype=torch.float64, device=self.device)[image_index]
        cols = torch.tensor([c for _, c in regions], dtype=torch.float64, device=self.device)[image_index]
        hw = torch.tensor(sizes, dtype=torch.float64, device=self.device)[image_index]  # [k, 2] (H, W)
        sy, sx = hw[:, 0] / rows, hw[:, 1] / cols
        return torch.stack([box[:, 0] * sx, box[:, 1] * sy, (box[:, 2] + 1) * sx - 1, (box[:, 3] + 1) * sy - 1], 1)

    def _upsample_full(self, low: torch.Tensor, resized, size) -> torch.Tensor:
        """Low-res logits -> logits at the image size, through the stock chain (S x S, crop, resize)."""
        x = F.interpolate(low.float()[:, None], (self.size, self.size), mode="bilinear", align_corners=False)
        x = x[..., : resized[0], : resized[1]]
        return F.interpolate(x, size, mode="bilinear", align_corners=False)[:, 0]

    # --- the batch -------------------------------------------------------------------------------

    def run(self, host_images, dev_images: list[torch.Tensor]) -> list:
        """-> per image (instance [H, W] uint16, records [K, 9] float64 with overlap.PAINT_FIELDS), on the device."""
        from torchvision.ops.boxes import batched_nms

        from .overlap import paint_largest_first

        sizes = [tuple(im.shape[:2]) for im in dev_images]
        with self.clock.stage("preprocess"), torch.inference_mode():
            x, resized = self._prepare(dev_images)
        with self.clock.stage("forward"), torch.inference_mode(), self._autocast():
            eb = max(1, self.cfg.sam_encoder_batch)
            features = torch.cat([self.model.image_encoder(x[i : i + eb]) for i in range(0, len(x), eb)])
        prompts = self._prompts(sizes, resized)  # [B, G, 2]
        b, g = prompts.shape[:2]
        full = self.cfg.sam_filter_resolution == "full"

        kept: dict[str, list] = {"low": [], "iou": [], "image": [], "boxes": []}
        full_masks: list[list[torch.Tensor]] = [[] for _ in range(b)]  # full mode: survivors per image
        if full:  # exactly the stock filters: per image, on masks upsampled to the image
            from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

            for i in range(b):
                for c0 in range(0, g, self.cfg.points_per_batch):
                    idx = torch.full((min(g, c0 + self.cfg.points_per_batch) - c0,), i, device=self.device)
                    low, iou = self._decode_points(features, idx, prompts[i, c0 : c0 + len(idx)])
                    with self.clock.stage("postprocess"), torch.inference_mode():
                        logits = self._upsample_full(low, resized[i], sizes[i])
                        stability = calculate_stability_score(logits, 0.0, STABILITY_OFFSET)
                        keep = torch.ones_like(iou, dtype=torch.bool)
                        if self.cfg.pred_iou_thresh > 0:
                            keep &= iou > self.cfg.pred_iou_thresh
                        if self.cfg.stability_score_thresh > 0:
                            keep &= stability >= self.cfg.stability_score_thresh
                        masks = logits[keep] > 0
                        full_masks[i].append(masks)
                        kept["boxes"].append(batched_mask_to_box(masks).double())
                        kept["iou"].append(iou[keep])
                        kept["image"].append(torch.full((masks.shape[0],), i, device=self.device))
        else:
            s = features.shape[-1] * 4  # low-res mask side
            regions = [(round(rh * s / self.size), round(rw * s / self.size)) for rh, rw in resized]
            image_all = torch.arange(b, device=self.device).repeat_interleave(g)
            coords_all = prompts.reshape(b * g, 2)
            for c0 in range(0, b * g, self.cfg.points_per_batch):
                c = slice(c0, c0 + self.cfg.points_per_batch)
                low, iou = self._decode_points(features, image_all[c], coords_all[c])
                with self.clock.stage("postprocess"), torch.inference_mode():
                    image = image_all[c].repeat_interleave(3)
                    idx = self._filter_low(low, iou, image, regions).nonzero()[:, 0]  # a host sync
                    for name, value in (("low", low), ("iou", iou), ("image", image)):
                        kept[name].append(value[idx])
                    kept["boxes"].append(self._boxes_low(low[idx], image[idx], regions, sizes))

        with self.clock.stage("postprocess"), torch.inference_mode():
            iou = torch.cat(kept["iou"])
            image = torch.cat(kept["image"])
            boxes = torch.cat(kept["boxes"])
            order = batched_nms(boxes.float(), iou, image, self.cfg.box_nms_thresh)  # score order, by image
            image_of = image[order].cpu().numpy()  # the batch's last host sync before the maps
            if full:  # survivors were collected image by image: image i's start in the global index
                pools = [torch.cat(m) for m in full_masks]
                starts = np.cumsum([0] + [len(p) for p in pools])
            else:
                pool = torch.cat(kept["low"])
            out = []
            for i in range(b):
                sel = order[torch.from_numpy(np.nonzero(image_of == i)[0]).to(self.device)]
                if full:
                    chosen = pools[i][sel - int(starts[i])]
                    get = lambda sl, m=chosen: m[sl]  # noqa: E731
                else:
                    # Survivors take the stock generator's upsampling (S x S, crop, image size), so a mask
                    # that both generators keep is the same mask; only which masks survive can differ.
                    chosen = pool[sel]
                    get = lambda sl, m=chosen, r=resized[i], hw=sizes[i]: self._upsample_full(m[sl], r, hw) > 0  # noqa: E731
                inst, records = paint_largest_first(get, len(sel), sizes[i], iou[sel], self.cfg.min_instance_area)
                out.append((inst.to(torch.uint16), records))
        return out
