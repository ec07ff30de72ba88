"""`sam3`: SAM 3's promptable concept segmentation with each image's class as the prompt.

    images + prompts (the first phrase: "tench") --Sam3Model--> per query: mask logits, a score,
      and one presence score per image
      --> instance score = sigmoid(query) x sigmoid(presence) (transformers' post-processing rule)
      --> the top --max-detections queries above --sam3-threshold, on the device (no host sync)
      --> mask probabilities resampled to the image, > --sam3-mask-threshold, painted largest first
      --> the maps of labeler/grounded.py's ClassMaps (image class on instances, background or stuff)

SAM 3's processor squashes every image to one square (1008 x 1008), so batches are exact by
construction; the text is padded to 32 tokens as its processor does.
"""

from __future__ import annotations

from dataclasses import dataclass

from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

from .base import ImageContext
from .composite import BatchLabeler
from .grounded import ClassMaps, HFModel, _load, instances_from_records, paint
from .imagenet_space import grounded_label_space
from .prompts import Prompt, PromptTable
from .timing import StageClock
from .transfer import to_device

TEXT_LENGTH = 32  # Sam3Processor pads and truncates the text to this many tokens
SAM3_TYPES = {"sam3": "Sam3Model", "sam3_video": "Sam3Model"}  # config model_type -> the class that loads it


def load_sam3(source: str, device: str = "auto", compile_: bool = False) -> HFModel:
    """Sam3Model with its processor (image processor + CLIP tokenizer); a `sam3_video` checkpoint's
    detector loads too (Sam3Model takes its detector config)."""
    return _load(source, "--sam3-model", SAM3_TYPES, device, "Sam3Processor", compile_)


@dataclass(frozen=True)
class Sam3Params:
    threshold: float  # instance score (query x presence) above which a query is an instance
    mask_threshold: float  # mask probability that counts as inside
    max_detections: int


class Sam3Labeler(BatchLabeler):
    def __init__(
        self,
        sam3: HFModel,
        prompts: PromptTable,
        params: Sam3Params,
        min_area: int,
        describe: LabelerInfo,
        stuff=None,
        clock: StageClock | None = None,
        precision=None,
    ):
        import torch

        from .precision import resolve_precision
        from .preprocess import HFPreprocessor

        self.sam3, self.prompts, self.params, self.min_area, self._describe = sam3, prompts, params, min_area, describe
        self.device = torch.device(sam3.device)
        self.clock = clock or StageClock(sam3.device)
        self.precision = precision or resolve_precision("auto", self.device)  # of the forward passes
        # The processor resizes to a fixed square: that square is the canvas (no rounding up).
        self.prep = HFPreprocessor(sam3.processor.image_processor, sam3.model_type, pad_multiple=1)
        self.tokenizer = sam3.processor.tokenizer
        self.maps = ClassMaps(stuff)
        self.cache: dict[str, list[list[int]]] = {}

    def _text(self, prompts: list[Prompt]):

        rows = []
        for p in prompts:
            if p.text not in self.cache:
                t = self.tokenizer(p.text, padding="max_length", max_length=TEXT_LENGTH, truncation=True)
                self.cache[p.text] = [t["input_ids"], t["attention_mask"]]
            rows.append(self.cache[p.text])
        return [to_device([r[0] for r in rows], self.device), to_device([r[1] for r in rows], self.device)]

    def _device_outputs(self, images, on_device, contexts=None):
        import torch

        from .postprocess import resample

        contexts = contexts or [None] * len(images)
        prompts = [self.prompts.resolve(c) for c in contexts]
        p = self.params
        with self.clock.stage("preprocess"):
            groups = self.prep(on_device)
        with self.clock.stage("postprocess"):
            base = self.maps.base(on_device)
        out: list = [None] * len(images)
        for g in groups:
            with self.clock.stage("preprocess"):
                ids, attn = self._text([prompts[i] for i in g.index])
            with self.clock.stage("forward"), torch.inference_mode(), self.precision.autocast():
                o = self.sam3.model(pixel_values=g.pixel_values, input_ids=ids, attention_mask=attn)
            with self.clock.stage("postprocess"), torch.inference_mode():
                scores = o.pred_logits.float().sigmoid()
                if o.presence_logits is not None:
                    scores = scores * o.presence_logits.float().sigmoid()
                k = min(p.max_detections, scores.shape[1])
                top, idx = scores.topk(k, dim=1)
                valid = top > p.threshold
                for j, i in enumerate(g.index):
                    pl, size = g.placements[j], tuple(on_device[i].shape[:2])
                    probs = o.pred_masks[j, idx[j]].float().sigmoid()  # [K, h, w]: probabilities, as transformers
                    hw = probs.shape[-2:]

                    def get(s, probs=probs, pl=pl, hw=hw, size=size, v=valid[j]):
                        inside = resample(probs[s], pl.region(hw), size, pl.step(hw)) > p.mask_threshold
                        return inside & v[s, None, None]  # queries below the threshold paint nothing

                    inst, records = paint(get, k, size, top[j], self.min_area, self.device)
                    sem, inst = self.maps.compose(base[i], inst, prompts[i].class_id)
                    nan = torch.full((k,), float("nan"), device=self.device)
                    extra = torch.stack([nan, nan, torch.zeros(k, device=self.device)], 1).double()
                    out[i] = [sem, inst, records, extra]
        return out

    def _labels(self, arrays, context: ImageContext | None = None):
        sem, inst, records, extra = arrays
        prompt = self.prompts.resolve(context)
        instances = instances_from_records(records, extra, prompt.class_id, prompt, phrase_always=True)
        return Labels(sem, inst, instances, prompt=prompt.text)

    def label_space(self) -> LabelSpace:
        p = self.params
        return grounded_label_space(
            self.prompts.class_names(),
            self.prompts.class_prompts(),
            {"instance": p.threshold, "mask_probability": p.mask_threshold},
        )

    def describe(self) -> LabelerInfo:
        return self._describe
