"""The label space of the text-prompted presets (`grounded`, `sam3`): one fixed id layout for every
dataset they label, so outputs with and without `--stuff-model` and outputs of both presets share
their ids (docs/FORMAT.md, "Label spaces").

    0 .. 999       the ImageNet-1K classes, at their standard indices (sorted WordNet ids, the order
                   of torchvision, timm and every ImageNet classifier): on ImageNet, an image's
                   object carries the same number as its `.cls`
    1000           background: pixels no grounded instance covers (and, with --stuff-model, no stuff class)
    1001 .. 1050   the 50 stuff classes of ADE20K-150 (wall, sky, floor, ...), in ADE20K id order
    1051 ..        the classes of a `--prompts` file that are not ImageNet-1K classes, one per distinct
                   prompt, in sorted order

The ImageNet classes, their WordNet lemmas and synsets come from timm (`timm.data.ImageNetInfo`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from shards.manifest import GROUNDED, LabelSpace

from .label_spaces import ADE20K_150_PANOPTIC

IMAGENET_CLASSES = 1000
BACKGROUND = IMAGENET_CLASSES  # the first id after ImageNet-1K's
STUFF_FIRST = 1001
# ADE20K-150 ids of its stuff classes, in id order, and their (Hugging Face id2label) names.
ADE20K_STUFF = tuple((i, hf_name) for i, thing, _, hf_name in ADE20K_150_PANOPTIC if not thing)
PROMPT_FIRST = STUFF_FIRST + len(ADE20K_STUFF)  # 1051
# The semantic map is uint16 and 65535 is its ignore value: room for this many prompt classes.
MAX_PROMPT_CLASSES = 65535 - PROMPT_FIRST
SEPARATORS = ".?"  # Grounding DINO splits a prompt into phrases at these (its tokenizer's special tokens)


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    synset: str  # WordNet id, e.g. n01440764
    name: str  # the first lemma ("tench"); the synset is appended where two classes share it ("crane")
    phrases: tuple[str, ...]  # the lemmas, the prompt's phrases: ("tench", "Tinca tinca")


def clean_phrase(text: str) -> str:
    """One phrase of a prompt: separators removed (a lemma such as "R.V." would split the prompt),
    whitespace collapsed."""
    for sep in SEPARATORS:
        text = text.replace(sep, "")
    return " ".join(text.split())


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = []
    for i in range(info.num_classes()):
        lemmas = info.index_to_description(i).split(", ")
        phrases = tuple(dict.fromkeys(p for p in (clean_phrase(x) for x in lemmas) if p))  # "RV, R.V.": once
        out.append((i, info.index_to_label_name(i), phrases))
    firsts = [p[0] for _, _, p in out]
    return tuple(ImageNetClass(i, syn, p[0] if firsts.count(p[0]) == 1 else f"{p[0]} ({syn})", p) for i, syn, p in out)


@functools.cache
def imagenet_index() -> dict[str, int]:
    """Synset -> ImageNet-1K class index."""
    return {c.synset: c.index for c in imagenet_classes()}


def grounded_label_space(
    prompt_classes: list[str],
    prompts: dict[int, str],
    thresholds: dict[str, float],
) -> LabelSpace:
    """The text-prompted presets' label space: ImageNet-1K, background, ADE20K stuff, then
    `prompt_classes` (names) from PROMPT_FIRST on. `prompts`: class id -> the prompt of its images
    (ImageNet classes and prompt classes); `thresholds`: what admitted an instance."""
    if len(prompt_classes) > MAX_PROMPT_CLASSES:
        raise ValueError(f"{len(prompt_classes)} prompt classes: more than the {MAX_PROMPT_CLASSES} a map can hold")
    classes = imagenet_classes()
    semantic = {str(c.index): c.name for c in classes}
    semantic[str(BACKGROUND)] = "background"
    for j, (_, name) in enumerate(ADE20K_STUFF):
        semantic[str(STUFF_FIRST + j)] = name
    things = {str(c.index): c.name for c in classes}
    for j, name in enumerate(prompt_classes):
        semantic[str(PROMPT_FIRST + j)] = name
        things[str(PROMPT_FIRST + j)] = name
    return LabelSpace(
        semantic=semantic,
        instance=things,
        kind=GROUNDED,
        background=BACKGROUND,
        synsets={str(c.index): c.synset for c in classes},
        prompts={str(k): v for k, v in sorted(prompts.items())},
        thresholds=thresholds,
    )


def stuff_lut(ade_names: dict[int, str]) -> list[int]:
    """A semantic model's ADE20K-150 ids -> this space's ids: stuff classes to 1001.., things (and
    anything else) to background, since only the prompt says which objects an image shows."""
    from .label_spaces import known_things

    known = known_things(ade_names)
    if known is None or not known[1].startswith("ade20k-150"):
        raise ValueError("not an ADE20K-150 label space")
    ours = {ade: STUFF_FIRST + j for j, (ade, _) in enumerate(ADE20K_STUFF)}
    return [ours.get(i, BACKGROUND) for i in range(256)]
