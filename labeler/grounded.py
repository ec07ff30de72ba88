"""Text-prompted labeling: each image's own class as a prompt (labeler/prompts.py) -> its objects.

`grounded` (Grounded-SAM style, as C2FMAE's pseudo-labels reportedly were made):

    images + prompts --Grounding DINO (per canvas group)--> box scores per query and prompt phrase
      --> box threshold, text threshold, top --max-detections, greedy box NMS (on the device, no sync)
      --> one host sync per batch: which boxes survive
      --> SAM-HQ (or SAM) image encoder on the images that have boxes, mask decoder on every box
      --> low-res mask logits resampled to each image, painted largest first (labeler/overlap.py)
      --> instance map + records (box score, matched phrase, mask score)
      --> semantic map: the image's class on its instances, background or --stuff-model's stuff elsewhere

`sam3` (labeler/sam3.py) replaces detector + SAM with SAM 3 and shares the maps (`ClassMaps`).

Batches are exact: Grounding DINO gets each image on a canvas that depends on the image only
(labeler/preprocess.py), each image's text on its own row (padding tokens take no part in its
phrases' attention, and a prompt always ends with a separator, so its tokens' attention blocks are
the same padded or not), SAM a fixed 1024 canvas and one decoder pass per box. An image where the
prompt finds nothing gets an empty instance map and a background (or stuff) semantic map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Instance, Labels

from .base import ImageContext, LabelerLoadError, resolve_device
from .composite import BatchLabeler
from .hub import from_pretrained, require_type
from .imagenet_space import BACKGROUND, grounded_label_space, stuff_lut
from .prompts import Prompt, PromptTable
from .timing import StageClock
from .transfer import to_device

DETECTORS = {
    "grounding-dino": "GroundingDinoForObjectDetection",
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
}
BOX_SAMS = {"sam_hq": "SamHQModel", "sam": "SamModel"}
EXTRA_FIELDS = ("box_score", "mask_score", "phrase")  # per mask, beside overlap.PAINT_FIELDS


@dataclass
class HFModel:
    """A loaded model with its processor, as the loaders below return it."""

    model: Any
    processor: Any
    model_type: str
    source: str
    device: str


def _load(source: str, what: str, classes: dict[str, str], device: str, processor_cls: str, compile_: bool = False):
    """Model (class by config type, from `classes`) + processor, by the hub rule of labeler/hub.py."""
    import torch
    import transformers

    def load(local: bool):
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
        mt = config.model_type
        require_type(source, what, mt, classes)
        model = getattr(transformers, classes[mt]).from_pretrained(source, local_files_only=local)
        processor = getattr(transformers, processor_cls).from_pretrained(source, local_files_only=local)
        return mt, model, processor

    mt, model, processor = from_pretrained(source, what, load)
    device = resolve_device(device)
    model = model.to(device).eval()
    if compile_:
        model = torch.compile(model)
    return HFModel(model, processor, mt, source, device)


def load_detector(source: str, device: str = "auto", compile_: bool = False) -> HFModel:
    """Grounding DINO or MM-Grounding-DINO with its processor (image processor + BERT tokenizer)."""
    return _load(source, "--grounding-model", DETECTORS, device, "AutoProcessor", compile_)


def load_box_sam(source: str, device: str = "auto", compile_: bool = False) -> HFModel:
    """SAM-HQ or SAM (transformers' classes) with its image processor, for box prompts."""
    return _load(source, "--box-sam-model", BOX_SAMS, device, "AutoImageProcessor", compile_)


def _unwrap(model):
    return getattr(model, "_orig_mod", model)  # through torch.compile's wrapper


class ClassMaps:
    """The semantic map of a text-prompted labeler: background, or with a stuff model its ADE20K
    stuff classes, then the image's class on its instances' pixels."""

    def __init__(self, stuff=None, clock: StageClock | None = None):
        import torch

        self.stuff = stuff  # hf.SemanticSegmenter of an ADE20K-150 model, or None
        self.lut = None
        if stuff is not None:
            try:
                lut = stuff_lut(stuff.seg.id2label)
            except ValueError:
                raise LabelerLoadError(
                    f"--stuff-model {stuff.seg.source!r} does not predict ADE20K-150 classes "
                    "(the label space has ADE20K's 50 stuff classes: docs/LABELERS.md)"
                ) from None
            self.lut = torch.tensor(lut, dtype=torch.int32, device=stuff.runner.device)

    def base(self, on_device: list) -> list:
        """Per image: [H, W] int32 ids before the instances are painted in."""
        import torch

        if self.stuff is None:
            return [torch.full(im.shape[:2], BACKGROUND, dtype=torch.int32, device=im.device) for im in on_device]
        return [self.lut[m.long()] for m in self.stuff.run(on_device)]

    @staticmethod
    def compose(base, inst, class_id: int):
        """(semantic, instance) maps as uint16: `class_id` where an instance is, `base` elsewhere."""
        import torch

        return torch.where(inst > 0, class_id, base).to(torch.uint16), inst.to(torch.uint16)


def paint(get_masks, n: int, size: tuple[int, int], scores, min_area: int, device):
    """Masks of one image -> (instance map [H, W] int64, records [n, 9] float64 with
    overlap.PAINT_FIELDS): the existing overlap rule, largest first."""
    import torch

    from .overlap import paint_largest_first

    if n == 0:
        empty = torch.zeros(0, 9, dtype=torch.float64, device=device)
        return torch.zeros(size, dtype=torch.int64, device=device), empty
    return paint_largest_first(get_masks, n, size, scores.double(), min_area)


def instances_from_records(
    records: np.ndarray, extra: np.ndarray, class_id: int, prompt: Prompt, phrase_always: bool = False
) -> list[Instance]:
    """Host side: painted rows (PAINT_FIELDS) that survived -> `Instance`s by id, each with its mask's
    extra columns (EXTRA_FIELDS: box score, mask score, phrase index; NaN where the model has none)."""
    rows = records[(records[:, 0] > 0) & (records[:, 1] > 0)]
    rows = rows[np.argsort(rows[:, 1], kind="stable")]
    out = []
    for r in rows:
        x0, y0, x1, y1 = (int(v) for v in r[5:9])
        box_score, mask_score, phrase = extra[int(r[2])]
        out.append(
            Instance(
                int(r[1]),
                class_id,
                float(r[3]),
                int(r[4]),
                [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                phrase=prompt.text if phrase_always else prompt.phrases[int(phrase)],
                box_score=None if np.isnan(box_score) else float(box_score),
                mask_score=None if np.isnan(mask_score) else float(mask_score),
            )
        )
    return out


@dataclass(frozen=True)
class DetectParams:
    box_threshold: float
    text_threshold: float
    max_detections: int
    box_nms: float


def greedy_nms(boxes, valid, threshold: float):
    """Greedy NMS over K score-sorted boxes per image, on the device without a host sync:
    boxes [n, K, 4] xyxy, valid [n, K] bool -> kept [n, K] bool (a box is dropped when a kept,
    higher-scoring box overlaps it with IoU > threshold: torchvision.ops.nms's rule)."""
    import torch

    if threshold >= 1.0 or boxes.shape[1] < 2:
        return valid
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-9)
    over = iou > threshold
    keep = valid.clone()
    for i in range(boxes.shape[1] - 1):  # K steps of whole-batch tensor ops
        keep[:, i + 1 :] &= ~(keep[:, i : i + 1] & over[:, i, i + 1 :])
    return keep


class TextEncoder:
    """Prompts -> Grounding DINO's text inputs, each distinct prompt tokenized once. Each token is
    tagged with the index of the prompt phrase it belongs to (-1: [CLS], [SEP], separators, padding)."""

    def __init__(self, tokenizer, model, device):
        special = [int(t) for t in _unwrap(model).model.special_tokens.tolist()]
        ids = tokenizer.convert_tokens_to_ids([tokenizer.cls_token, tokenizer.sep_token, ".", "?"])
        if sorted(ids) != sorted(special):
            raise LabelerLoadError(
                f"the detector's tokenizer gives [CLS] [SEP] . ? the ids {ids}, but the model splits phrases at "
                f"{special}: tokenizer and model do not belong together"
            )
        self.tokenizer, self.device = tokenizer, device
        self.separators = set(ids[2:])
        self.specials = set(ids[:2]) | {tokenizer.pad_token_id}
        self.max_len = _unwrap(model).config.max_text_len
        self.cache: dict[str, tuple[list[int], list[int]]] = {}

    def tokens(self, text: str) -> tuple[list[int], list[int]]:
        """(input ids, phrase index per token)."""
        if text not in self.cache:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_len)["input_ids"]
            phrase, k = [], 0
            for t in ids:
                if t in self.separators:
                    phrase.append(-1)
                    k += 1
                else:
                    phrase.append(-1 if t in self.specials else k)
            self.cache[text] = (ids, phrase)
        return self.cache[text]

    def __call__(self, prompts: list[Prompt]):
        """-> input_ids, attention_mask, token_type_ids, phrase ids: [n, T] each, on the device."""
        import torch

        rows = [self.tokens(p.text) for p in prompts]
        t = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (t - len(r)) for r, _ in rows])
        attn = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r, _ in rows])
        phrase = torch.tensor([p + [-1] * (t - len(p)) for _, p in rows])
        return [to_device(x, self.device) for x in (ids, attn, torch.zeros_like(ids), phrase)]


def detect(logits, pred_boxes, phrase, sizes, p: DetectParams):
    """Grounding DINO outputs of n images -> the K best boxes per image, on the device.

    logits [n, Q, L] (L = max_text_len, -inf past each image's text), pred_boxes [n, Q, 4] cxcywh
    relative to each image, phrase [n, T] (T <= L) phrase index per token, sizes [n, 2] (H, W).
    A box's score is its highest token probability (transformers' rule); the phrase it matched is
    the prompt phrase holding its most probable token. It is kept when its score > box threshold and
    its phrase's score > text threshold, then the top `max_detections` go through greedy NMS.
    Returns keep [n, K] bool, boxes [n, K, 4] xyxy in image pixels, box score [n, K], phrase [n, K]."""
    import torch

    n, q, _ = logits.shape
    t = phrase.shape[1]
    probs = logits[..., :t].float().sigmoid()  # -inf -> 0: padding never scores
    box_score = probs.amax(-1)
    n_phrases = t  # an upper bound (every phrase has a token) that needs no sync
    slot = torch.where(phrase >= 0, phrase, n_phrases)[:, None, :].expand(n, q, t)
    per_phrase = torch.zeros(n, q, n_phrases + 1, device=probs.device).scatter_reduce_(2, slot, probs, "amax")
    phrase_score, best = per_phrase[..., :n_phrases].max(-1)
    keep = (box_score > p.box_threshold) & (phrase_score > p.text_threshold)
    k = min(p.max_detections, q)
    top, idx = torch.where(keep, box_score, -1.0).topk(k, dim=1)
    valid = top > -0.5
    cx, cy, w, h = pred_boxes.float().gather(1, idx[..., None].expand(n, k, 4)).unbind(-1)
    hh, ww = sizes[:, 0, None].float(), sizes[:, 1, None].float()
    xyxy = torch.stack([(cx - w / 2) * ww, (cy - h / 2) * hh, (cx + w / 2) * ww, (cy + h / 2) * hh], -1)
    boxes = torch.minimum(xyxy.clamp(min=0), torch.stack([ww, hh, ww, hh], -1))  # inside the image
    valid = greedy_nms(boxes, valid, p.box_nms)
    return valid, boxes, top, best.gather(1, idx)


class GroundedLabeler(BatchLabeler):
    """Grounding DINO boxes from each image's prompt, box-prompted SAM-HQ (or SAM) masks."""

    def __init__(
        self,
        detector: HFModel,
        box_sam: HFModel,
        prompts: PromptTable,
        params: DetectParams,
        mask_threshold: float,
        min_area: int,
        describe: LabelerInfo,
        stuff=None,
        pad_multiple: int = 32,
        encoder_batch: int = 8,
        hq_token_only: bool = False,
        clock: StageClock | None = None,
        precision=None,
    ):
        import torch

        from .precision import resolve_precision
        from .preprocess import HFPreprocessor

        self.detector, self.box_sam, self.prompts, self.params = detector, box_sam, prompts, params
        self.mask_threshold, self.min_area, self._describe = mask_threshold, min_area, describe
        self.device = torch.device(detector.device)
        self.clock = clock or StageClock(detector.device)
        self.text = TextEncoder(detector.processor.tokenizer, detector.model, self.device)
        self.det_prep = HFPreprocessor(detector.processor.image_processor, detector.model_type, pad_multiple)
        self.sam_prep = HFPreprocessor(box_sam.processor, box_sam.model_type, pad_multiple)
        if self.sam_prep.fixed_canvas is None:
            raise LabelerLoadError(f"--box-sam-model {box_sam.source!r}: its processor does not pad to a fixed size")
        self.maps = ClassMaps(stuff)
        self.encoder_batch, self.hq = max(1, encoder_batch), box_sam.model_type == "sam_hq"
        self.hq_token_only = hq_token_only
        self.precision = precision or resolve_precision("auto", self.device)  # of the forward passes

    def _detect(self, on_device, prompts: list[Prompt]):
        """-> keep [B, K], boxes [B, K, 4], box scores [B, K], phrase [B, K], in batch order."""
        import torch

        with self.clock.stage("preprocess"):
            groups = self.det_prep(on_device)
        b, parts = len(on_device), []
        for g in groups:
            with self.clock.stage("preprocess"):
                ids, attn, types, phrase = self.text([prompts[i] for i in g.index])
            with self.clock.stage("forward"), torch.inference_mode(), self.precision.autocast():
                o = self.detector.model(
                    pixel_values=g.pixel_values,
                    pixel_mask=g.pixel_mask,
                    input_ids=ids,
                    attention_mask=attn,
                    token_type_ids=types,
                )
            with self.clock.stage("postprocess"), torch.inference_mode():
                sizes = to_device([p.size for p in g.placements], self.device)
                parts.append((g.index, detect(o.logits, o.pred_boxes, phrase, sizes, self.params)))
        k = parts[0][1][0].shape[1]
        out = [
            torch.zeros(b, k, dtype=torch.bool, device=self.device),
            torch.zeros(b, k, 4, device=self.device),
            torch.zeros(b, k, device=self.device),
            torch.zeros(b, k, dtype=torch.int64, device=self.device),
        ]
        for index, results in parts:
            where = to_device(index, self.device)
            for o, r in zip(out, results, strict=True):
                o[where] = r.to(o.dtype)
        return out

    def _masks(self, on_device, keep_host, boxes):
        """Box-prompted low-res mask logits [N, h, w] and predicted IoUs [N] for the kept boxes (in
        image order, then score order), with the SAM placement of each image that has any."""
        import torch

        images = [i for i in range(len(on_device)) if keep_host[i].any()]
        if not images:
            return {}, None, None
        with self.clock.stage("preprocess"):
            (g,) = self.sam_prep([on_device[i] for i in images])  # one fixed canvas
        model = self.box_sam.model
        embeddings, inter = [], []
        with self.clock.stage("forward"), torch.inference_mode(), self.precision.autocast():
            for s in range(0, len(images), self.encoder_batch):
                e = _unwrap(model).get_image_embeddings(g.pixel_values[s : s + self.encoder_batch])
                if self.hq:
                    e, x = e
                    inter.append(x)
                embeddings.append(e)
        emb = torch.cat(embeddings)
        inter = [torch.cat([x[j] for x in inter]) for j in range(len(inter[0]))] if inter else None
        pos = {img: j for j, img in enumerate(images)}
        rows = keep_host.nonzero()  # (image, slot) of every kept box, image by image (host)
        img_of_box = torch.tensor([pos[i] for i in rows[:, 0].tolist()])
        # x and y scale from image pixels to the SAM canvas, per box: [sx, sy, sx, sy]
        scale = torch.tensor([[p.resized[1] / p.size[1], p.resized[0] / p.size[0]] for p in g.placements])
        scale = scale[img_of_box].repeat(1, 2)
        img_of_box, scale, rows = (to_device(x, self.device) for x in (img_of_box, scale, rows))
        sam_boxes = (boxes[rows[:, 0], rows[:, 1]] * scale)[:, None, :]  # [N, 1, 4] in the SAM canvas
        masks, ious = [], []
        with self.clock.stage("forward"), torch.inference_mode(), self.precision.autocast():
            for s in range(0, len(sam_boxes), 64):  # bounded memory: the embeddings are gathered per box
                j = img_of_box[s : s + 64]
                kwargs: dict[str, Any] = {
                    "image_embeddings": emb[j],
                    "input_boxes": sam_boxes[s : s + 64],
                    "multimask_output": False,
                }
                if self.hq:
                    kwargs |= {"intermediate_embeddings": [x[j] for x in inter], "hq_token_only": self.hq_token_only}
                o = model(**kwargs)
                masks.append(o.pred_masks[:, 0, 0].float())
                ious.append(o.iou_scores[:, 0, 0].float())
        return {img: g.placements[j] for img, j in pos.items()}, torch.cat(masks), torch.cat(ious)

    def _device_outputs(self, images, on_device, contexts=None):
        import torch

        from .postprocess import resample

        contexts = contexts or [None] * len(images)
        prompts = [self.prompts.resolve(c) for c in contexts]  # NoPrompt: the batch is retried image by image
        keep, boxes, box_score, phrase = self._detect(on_device, prompts)
        with self.clock.stage("postprocess"):
            base = self.maps.base(on_device)
        keep_host = keep.cpu()  # the batch's one wait for the device before the masks
        placements, masks, ious = self._masks(on_device, keep_host, boxes)
        out, offset = [], 0
        with self.clock.stage("postprocess"), torch.inference_mode():
            for i, im in enumerate(on_device):
                size = tuple(im.shape[:2])
                n = int(keep_host[i].sum())
                slots = to_device(keep_host[i].nonzero()[:, 0], self.device)
                if n:
                    p, low = placements[i], masks[offset : offset + n]
                    hw = low.shape[-2:]

                    def get(s, low=low, p=p, hw=hw, size=size):
                        return resample(low[s], p.region(hw), size, p.step(hw)) > self.mask_threshold

                    scores = box_score[i, slots]
                    extra = torch.stack([scores, ious[offset : offset + n], phrase[i, slots].float()], 1).double()
                else:
                    get, scores, extra = None, None, torch.zeros(0, 3, dtype=torch.float64, device=self.device)
                inst, records = paint(get, n, size, scores, self.min_area, self.device)
                sem, inst = self.maps.compose(base[i], inst, prompts[i].class_id)
                out.append([sem, inst, records, extra])
                offset += n
        return out

    def _labels(self, arrays, context: ImageContext | None = None):
        sem, inst, records, extra = arrays
        prompt = self.prompts.resolve(context)
        return Labels(sem, inst, instances_from_records(records, extra, prompt.class_id, prompt), prompt=prompt.text)

    def label_space(self) -> LabelSpace:
        p = self.params
        return grounded_label_space(
            self.prompts.class_names(),
            self.prompts.class_prompts(),
            {"box": p.box_threshold, "text": p.text_threshold, "mask_logit": self.mask_threshold},
        )

    def describe(self) -> LabelerInfo:
        return self._describe
