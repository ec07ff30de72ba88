"""Each image's text prompt and the class it grounds, for the text-prompted presets.

The prompt comes from what the plan knows of the image (`ImageContext`: key and class folder), so
it travels with the image and a shard task never needs a table:

1. `--prompts FILE` entry for the image's key, else for its class folder (synset), else `"*"`;
2. else the lemmas of its ImageNet-1K synset (timm's ImageNetInfo): n01440764 -> "tench. Tinca tinca.";
3. else the image has no prompt: it fails alone (quarantined with the reason), and a job whose input
   has no classes and no `--prompts` is refused before it starts (`check_prompted_input`).

The class an image's object gets in the semantic map is its ImageNet-1K class when it has one (the
prompt only says how to find it), else the prompt's own class (labeler/imagenet_space.py).

FILE is a JSON object `{"n01440764": "tench. fish.", "img_0001": "a red kite.", "*": "dog."}` (keys:
sample keys, class folders, or `*` for every other image), or plain text: one prompt for all images.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from shards import format as fmt
from shards.errors import UsageError, first_line

from .base import ImageContext
from .imagenet_space import MAX_PROMPT_CLASSES, PROMPT_FIRST, clean_phrase, imagenet_classes, imagenet_index

ANY = "*"  # the --prompts entry for every image that has no entry of its own
MAX_PROMPTS_BYTES = fmt.MAX_MANIFEST_BYTES  # a key -> prompt map of all of ImageNet is ~60 MB


class NoPrompt(ValueError):
    """An image for which neither `--prompts` nor its class gives a prompt (that image is quarantined)."""


class PromptsError(UsageError):
    """A `--prompts` file that cannot be read or is not a prompt table (exit 2, before any labeling)."""


@dataclass(frozen=True)
class Prompt:
    text: str  # what the model reads: "tench. Tinca tinca." (`sam3`: the first phrase, "tench")
    phrases: tuple[str, ...]  # the phrases it is made of, in order: what an instance can match
    class_id: int  # the semantic id of the objects it finds


def phrases_of(text: str) -> tuple[str, ...]:
    """A prompt's phrases: split at Grounding DINO's separators ('.', '?'), whitespace collapsed."""
    return tuple(p for p in (clean_phrase(x) for x in re.split(r"[.?]", text)) if p)


class PromptTable:
    """The prompt of every image, from the ImageNet lemmas and an optional `--prompts` table.

    `first_phrase`: the model reads one noun phrase (SAM 3), not Grounding DINO's "a. b." list. The
    class ids are the same either way, so `grounded` and `sam3` outputs share one label space."""

    def __init__(self, entries: dict[str, str] | None = None, source: str = "", first_phrase: bool = False):
        self.first_phrase = first_phrase
        self.entries: dict[str, tuple[str, ...]] = {}
        for k, v in (entries or {}).items():
            phrases = phrases_of(v)
            if not phrases:
                raise PromptsError(f"--prompts {source}: the prompt of {k!r} is empty")
            self.entries[k] = phrases
        in1k = imagenet_index()
        # Entries for ImageNet-1K classes only re-word how those classes are found; every other
        # distinct prompt can label an image without an ImageNet class, so it is a class of its own.
        own = sorted({self.name(p) for k, p in self.entries.items() if k not in in1k})
        if len(own) > MAX_PROMPT_CLASSES:
            raise PromptsError(
                f"--prompts {source}: {len(own)} distinct prompts for images without an ImageNet-1K class; a "
                f"uint16 map holds {MAX_PROMPT_CLASSES} classes besides ImageNet's (share prompts between images)"
            )
        self.prompt_class = {name: PROMPT_FIRST + j for j, name in enumerate(own)}
        self.source = source

    @staticmethod
    def name(phrases: tuple[str, ...]) -> str:
        return ". ".join(phrases)

    def text(self, phrases: tuple[str, ...]) -> str:
        return phrases[0] if self.first_phrase else self.name(phrases) + "."

    @classmethod
    def load(cls, path: str, first_phrase: bool = False) -> PromptTable:
        """The `--prompts` table at `path` (a local path or any fsspec URL; read on the labeling
        actor, so on a cluster it must be reachable from every node); '' -> the ImageNet lemmas only."""
        if not path:
            return cls(first_phrase=first_phrase)
        from shards.location import read_bytes

        try:
            data = read_bytes(path, MAX_PROMPTS_BYTES)
        except (OSError, ValueError) as e:
            raise PromptsError(f"cannot read --prompts {path}: {first_line(e)}") from None
        if data is None:
            raise PromptsError(f"--prompts {path}: no such file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PromptsError(f"--prompts {path} is not UTF-8 text") from None
        if text.lstrip().startswith("{"):
            try:
                entries = json.loads(text)
            except ValueError as e:
                raise PromptsError(f"--prompts {path} is not valid JSON: {first_line(e)}") from None
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in entries.items()):
                raise PromptsError(f'--prompts {path}: expected {{"key or class": "prompt", ...}} with string values')
        else:
            entries = {ANY: " ".join(text.split())}
        table = cls(entries, path, first_phrase)
        table.source = f"--prompts {path} (sha256 {hashlib.sha256(data).hexdigest()})"
        return table

    @property
    def describe(self) -> str:
        """Where prompts come from, for the manifest's `labeler.prompt_source`."""
        lemmas = "ImageNet-1K synset lemmas (timm ImageNetInfo)"
        return f"{self.source}, else {lemmas}" if self.source else lemmas

    @property
    def any(self) -> bool:
        """Every image has a prompt, whatever its class (the table has `*`)."""
        return ANY in self.entries

    def resolve(self, ctx: ImageContext | None) -> Prompt:
        key, synset = (ctx.key, ctx.synset) if ctx is not None else (None, None)
        phrases = None
        for k in (key, synset, ANY):
            if k is not None and k in self.entries:
                phrases = self.entries[k]
                break
        in1k = imagenet_index().get(synset) if synset else None
        if phrases is None:
            if in1k is None:
                raise NoPrompt(
                    f"no prompt: class {synset!r} is not an ImageNet-1K class and --prompts names neither "
                    f"it nor key {key!r} (nor '*')"
                )
            phrases = imagenet_classes()[in1k].phrases
        class_id = in1k if in1k is not None else self.prompt_class[self.name(phrases)]
        return Prompt(self.text(phrases), phrases, class_id)

    def class_names(self) -> list[str]:
        """Names of the prompt classes, in id order (from PROMPT_FIRST)."""
        return list(self.prompt_class)

    def class_prompts(self) -> dict[int, str]:
        """Class id -> the prompt its images are labeled with (key entries aside, which the samples record)."""
        in1k = imagenet_index()
        out = {c.index: self.text(self.entries.get(c.synset, c.phrases)) for c in imagenet_classes()}
        named = {self.name(p): p for k, p in self.entries.items() if k not in in1k}
        out.update({cid: self.text(named[name]) for name, cid in self.prompt_class.items()})
        return out


def check_prompted_input(table: PromptTable, has_classes: bool) -> None:
    """A job whose inputs have no class folders needs `--prompts` with a `*` entry or key entries:
    without one, every image would fail."""
    if not has_classes and not table.entries:
        raise PromptsError(
            "the input has no class folders (ImageNet layout <wnid>/<file>) to build prompts from: pass "
            "--prompts FILE (a JSON {key or class: prompt} table, or one prompt for all images)"
        )
