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

GPU-shaped (`gpu`, default on CUDA; selectable on a CPU): the host waits for the device a fixed number of
times per batch, however many prompts: once for the filters' survivors (all chunks' low-res logits
stay on the device until then, up to HOLD_BYTES), once in torchvision's NMS (which finishes on the
host) and once for the survivors per image; no host-built index tensors, no boolean indexing (the
prompt embeddings are computed without segment_anything's label masks), SDPA attention with
relative-position tables built once per block. CPU-shaped: each chunk's survivors are taken at once
(a host sync costs nothing there; memory does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LabelerLoadError
from .config import SamConfig
from .postprocess import arange_on, count_ids, count_true
from .timing import StageClock
from .transfer import to_device

STABILITY_OFFSET = 1.0  # SamAutomaticMaskGenerator's default stability_score_offset
# GPU layout: low-res logits held on the device until the batch's one filter sync (bytes; 16 images x
# 256 prompts x 3 masks x 256^2 in bf16 is 1.6 GB). Beyond it the survivors are taken more often.
HOLD_BYTES = 8 << 30


class BatchedSamInstances:
    def __init__(
        self,
        model,
        cfg: SamConfig,
        clock: StageClock | None = None,
        gpu: bool | None = None,
        precision=None,
        compile: bool = False,
    ):
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
        from .precision import resolve_precision

        self.cuda = self.device.type == "cuda"
        self.gpu = self.cuda if gpu is None else gpu  # pre/post-processing's layout (docstring)
        self.precision = precision or resolve_precision("auto", self.device)
        self.size = model.image_encoder.img_size  # square model input (1024 for the public SAMs)
        # Same grid as the stock generator, in float64 as it computes prompt coordinates.
        self.grid = torch.as_tensor(build_point_grid(cfg.points_per_side), device=self.device)
        if self.gpu:
            from .sam_sdpa import use_sdpa

            use_sdpa(model.image_encoder)
        # --compile: the image encoder (most of SAM's cost) at a fixed input size; encoder batches are
        # padded to a power of two, so it compiles at most log2(--sam-encoder-batch) + 1 times.
        self.compiled = compile
        if compile:
            from .precision import compile_model

            self.encoder = compile_model(model.image_encoder)
        else:
            self.encoder = model.image_encoder

    # --- model ---------------------------------------------------------------------------------

    def _autocast(self):
        return self.precision.autocast()

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

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings of model inputs x [n, 3, S, S]; compiled: n padded to a power of two."""
        n = x.shape[0]
        if not self.compiled or n & (n - 1) == 0:
            return self.encoder(x)
        padded = 1 << (n - 1).bit_length()
        return self.encoder(torch.cat([x, x.new_zeros(padded - n, *x.shape[1:])]))[:n]

    def decode(self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, dense_pe=None):
        """SAM's mask decoder for prompts of different images: features [n, C, e, e] (each prompt's
        image embedding), sparse [n, T, C], dense [n, C, e, e] -> (low-res logits [n, 3, 4e, 4e],
        predicted IoU [n, 3]) for the three multimask outputs. `MaskDecoder.forward` takes one image
        and repeats it per prompt; this is the same computation with the image chosen per prompt.
        `dense_pe`: the prompt encoder's dense positional encoding, if already computed."""
        dec = self.model.mask_decoder
        n = sparse.shape[0]
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1), sparse], dim=1)
        src = features + dense
        pos = (self.model.prompt_encoder.get_dense_pe() if dense_pe is None else dense_pe).expand(n, -1, -1, -1)
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
        """Point grid of every image in its model-input frame: [B, G, 2] float64 (x, y), computed as the
        stock generator does (grid x image size, then x model-input scale), from Python numbers."""
        out = []
        for (h, w), (rh, rw) in zip(sizes, resized, strict=True):
            x, y = self.grid[:, 0] * w * (rw / w), self.grid[:, 1] * h * (rh / h)
            out.append(torch.stack([x, y], dim=1))
        return torch.stack(out)

    def _sparse(self, coords: torch.Tensor) -> torch.Tensor:
        """Point prompts [n, 2] (each a foreground point) -> sparse embeddings [n, 2, C]: what
        segment_anything's PromptEncoder computes for them (the point, then a padding point), without
        its boolean-mask assignments (each a host sync on CUDA): the labels are known here."""
        enc = self.model.prompt_encoder
        points = coords[:, None, :] + 0.5  # pixel centres, as PromptEncoder._embed_points
        points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
        pe = enc.pe_layer.forward_with_coords(points, enc.input_image_size)  # [n, 2, C]
        point = (pe[:, :1] + enc.point_embeddings[1].weight).to(pe.dtype)  # label 1: in place there
        pad = enc.not_a_point_embed.weight.to(pe.dtype).expand(points.shape[0], 1, -1)  # label -1: 0 + embed
        return torch.cat([point, pad], dim=1).float()  # PromptEncoder concatenates onto a float32 tensor

    def _decode_points(self, features, image_index, coords, dense_pe=None):
        """Prompts (image index [n], coords [n, 2]) -> low-res logits [n*3, s, s], IoU [n*3]."""
        with self.clock.stage("forward"), torch.inference_mode(), self._autocast():
            if self.gpu:
                enc = self.model.prompt_encoder
                sparse = self._sparse(coords)
                e_h, e_w = enc.image_embedding_size
                dense = enc.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(coords.shape[0], -1, e_h, e_w)
            else:
                labels = torch.ones(coords.shape[0], dtype=torch.int, device=self.device)
                sparse, dense = self.model.prompt_encoder(
                    points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None
                )
            low, iou = self.decode(features[image_index], sparse, dense, dense_pe)
        return low.flatten(0, 1), iou.flatten().float()

    # --- filtering -------------------------------------------------------------------------------

    def _inside(self, image_index, regions: torch.Tensor, shape) -> torch.Tensor:
        """[m, s, s] bool: the low-res pixels of each mask that lie on its image (not on padding);
        regions [B, 2] int64 on the device: each image's (rows, cols) at low resolution."""
        s_h, s_w = shape
        rows, cols = regions[image_index, 0], regions[image_index, 1]
        in_rows = arange_on(s_h, self.device)[None, :] < rows[:, None]
        in_cols = arange_on(s_w, self.device)[None, :] < cols[:, None]
        return in_rows[:, :, None] & in_cols[:, None, :]

    def _filter_low(self, low, iou, image_index, regions) -> torch.Tensor:
        """Predicted-IoU and stability filters on low-res logits [m, s, s] -> keep [m] bool."""
        logits = low.float()
        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.cfg.pred_iou_thresh > 0:
            keep &= iou > self.cfg.pred_iou_thresh
        if self.cfg.stability_score_thresh > 0:
            inside = self._inside(image_index, regions, logits.shape[-2:])
            high = count_true((logits > STABILITY_OFFSET) & inside)
            union = count_true((logits > -STABILITY_OFFSET) & inside)
            keep &= high / union >= self.cfg.stability_score_thresh
        return keep

    def _boxes_low(self, low, image_index, regions, scale) -> torch.Tensor:
        """Boxes of low-res masks [k, s, s] in image pixels (XYXY, inclusive) -> [k, 4] float64;
        scale [B, 2] float64: each image's (H / rows, W / cols)."""
        from segment_anything.utils.amg import batched_mask_to_box

        inside = self._inside(image_index, regions, low.shape[-2:])
        box = batched_mask_to_box((low.float() > 0) & inside).double()
        sy, sx = scale[image_index, 0], scale[image_index, 1]
        return torch.stack([box[:, 0] * sx, box[:, 1] * sy, (box[:, 2] + 1) * sx - 1, (box[:, 3] + 1) * sy - 1], 1)

    def _upsample_full(self, low: torch.Tensor, resized, size) -> torch.Tensor:
        """Low-res logits -> logits at the image size, through the stock chain (S x S, crop, resize)."""
        x = F.interpolate(low.float()[:, None], (self.size, self.size), mode="bilinear", align_corners=False)
        x = x[..., : resized[0], : resized[1]]
        return F.interpolate(x, size, mode="bilinear", align_corners=False)[:, 0]

    # --- the batch -------------------------------------------------------------------------------

    def run(self, host_images, dev_images: list[torch.Tensor]) -> list:
        """-> per image (instance [H, W] uint16, records [K, 9] float64 with overlap.PAINT_FIELDS), on the device."""
        from .overlap import paint_largest_first

        sizes = [tuple(im.shape[:2]) for im in dev_images]
        with self.clock.stage("preprocess"), torch.inference_mode():
            x, resized = self._prepare(dev_images)
        with self.clock.stage("forward"), torch.inference_mode(), self._autocast():
            eb = max(1, self.cfg.sam_encoder_batch)
            features = torch.cat([self._encode(x[i : i + eb]) for i in range(0, len(x), eb)])
        with self.clock.stage("preprocess"):
            prompts = self._prompts(sizes, resized)  # [B, G, 2]
        full = self.cfg.sam_filter_resolution == "full"
        if full:
            iou, image, boxes, pools = self._survivors_full(features, prompts, resized, sizes)
        else:
            iou, image, boxes, pool = self._survivors_low(features, prompts, resized, sizes)
        with self.clock.stage("postprocess"), torch.inference_mode():
            order, counts = self._nms_by_image(boxes, iou, image, len(sizes))
            out, start = [], 0
            for i, n in enumerate(counts):
                sel = order[start : start + n]  # image i's survivors, best first
                start += n
                if full:
                    chosen, offset = pools[i]
                    chosen = chosen[sel - offset]
                    get = lambda sl, m=chosen: m[sl]  # noqa: E731
                else:
                    # Survivors take the stock generator's upsampling (S x S, crop, image size), so a mask
                    # that both generators keep is the same mask; only which masks survive can differ.
                    chosen = pool[sel]
                    get = lambda sl, m=chosen, r=resized[i], hw=sizes[i]: self._upsample_full(m[sl], r, hw) > 0  # noqa: E731
                inst, records = paint_largest_first(get, n, sizes[i], iou[sel], self.cfg.min_instance_area)
                out.append((inst.to(torch.uint16), records))
        return out

    def _nms_by_image(self, boxes, iou, image, b: int) -> tuple[torch.Tensor, list[int]]:
        """Box NMS within each image, all images in one call -> (survivors grouped by image, best first
        within each; survivors per image, on the host). Boxes of different images are moved apart so they
        never overlap (torchvision's batched_nms does the same below 1,000 boxes on CPUs, 5,000 on GPUs);
        NMS finishes on the host, and the per-image counts come back in one copy."""
        from torchvision.ops import nms

        if boxes.shape[0] == 0:
            return image.new_zeros(0), [0] * b
        boxes = boxes.float()
        apart = boxes + (image.to(boxes.dtype) * (boxes.max() + 1))[:, None]
        order = nms(apart, iou, self.cfg.box_nms_thresh)  # by score
        by_image = order[torch.sort(image[order], stable=True).indices]
        return by_image, count_ids(image[order], b).cpu().tolist()  # the host needs the counts to slice

    def _survivors_low(self, features, prompts, resized, sizes):
        """Every prompt through the decoder, `points_per_batch` at a time; the filters on the low-res
        logits -> (IoU, image index, box, low-res logits) of the masks that pass, on the device."""
        b, g = prompts.shape[:2]
        s = features.shape[-1] * 4  # low-res mask side
        regions = [(round(rh * s / self.size), round(rw * s / self.size)) for rh, rw in resized]
        with self.clock.stage("postprocess"):
            # Per-image tables, uploaded once per batch (no host-built tensor per chunk).
            table = to_device(regions, self.device, torch.int64)
            ratios = [(h / r, w / c) for (h, w), (r, c) in zip(sizes, regions, strict=True)]
            scale = to_device(ratios, self.device, torch.float64)
            image_all = arange_on(b, self.device)[:, None].expand(b, g).reshape(-1)
            coords_all = prompts.reshape(b * g, 2)
        with self.clock.stage("forward"), torch.inference_mode(), self._autocast():
            dense_pe = self.model.prompt_encoder.get_dense_pe()  # once per batch, not per chunk
        held: dict[str, list] = {"low": [], "iou": [], "image": [], "boxes": [], "keep": []}
        kept: dict[str, list] = {"low": [], "iou": [], "image": [], "boxes": []}
        held_bytes = 0

        def take():  # the held chunks' survivors (GPU layout: one host sync for all of them)
            keep = torch.cat(held.pop("keep"))
            idx = keep.nonzero()[:, 0]
            for name in kept:
                kept[name].append(torch.cat(held[name])[idx])
                held[name] = []
            held["keep"] = []

        for c0 in range(0, b * g, self.cfg.points_per_batch):
            c = slice(c0, c0 + self.cfg.points_per_batch)
            low, iou = self._decode_points(features, image_all[c], coords_all[c], dense_pe)
            with self.clock.stage("postprocess"), torch.inference_mode():
                image = image_all[c][:, None].expand(-1, 3).reshape(-1)  # each prompt's three masks
                keep = self._filter_low(low, iou, image, table)
                if self.gpu:  # hold everything on the device; boxes for all masks (no sync to select them)
                    boxes = self._boxes_low(low, image, table, scale)
                    for name, value in (("low", low), ("iou", iou), ("image", image), ("boxes", boxes), ("keep", keep)):
                        held[name].append(value)
                    held_bytes += low.numel() * low.element_size()
                    if held_bytes > HOLD_BYTES:
                        take()
                        held_bytes = 0
                else:
                    idx = keep.nonzero()[:, 0]  # a host sync: free on a CPU
                    for name, value in (("low", low), ("iou", iou), ("image", image)):
                        kept[name].append(value[idx])
                    kept["boxes"].append(self._boxes_low(low[idx], image[idx], table, scale))
        with self.clock.stage("postprocess"), torch.inference_mode():
            if held["keep"]:
                take()
            return tuple(torch.cat(kept[name]) for name in ("iou", "image", "boxes", "low"))

    def _survivors_full(self, features, prompts, resized, sizes):
        """Exactly the stock filters: per image, on masks upsampled to the image (for comparison; its host
        syncs grow with the prompts) -> (IoU, image index, box, per image (its survivors, first index))."""
        from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

        b, g = prompts.shape[:2]
        iou_kept, image_kept, boxes_kept, pools = [], [], [], []
        total = 0
        for i in range(b):
            masks_i = []
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
                    masks_i.append(masks)
                    boxes_kept.append(batched_mask_to_box(masks).double())
                    iou_kept.append(iou[keep])
                    image_kept.append(torch.full((masks.shape[0],), i, device=self.device))
            pool = torch.cat(masks_i)
            pools.append((pool, total))  # image i's survivors start at `total` in the batch's index
            total += pool.shape[0]
        return torch.cat(iou_kept), torch.cat(image_kept), torch.cat(boxes_kept), pools
