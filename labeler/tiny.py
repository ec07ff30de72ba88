"""Tiny, randomly initialised models of the production architectures.

For tests, the demo and CI only: same classes (SegFormer, Mask2Former, OneFormer, EoMT, SAM) at a few thousand
parameters, built from configs with a fixed seed, saved like real checkpoints and loaded back
through the production loaders. Their labels are random; every manifest built with them says so.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

# What the tiny random presets add to their description.
RANDOM = {"random_labels": True, "note": "tiny randomly initialised models: the labels carry no meaning"}


def tiny_dir() -> Path:
    """A fresh temp dir for a tiny preset's models: each worker process writes its own copy, so
    Ray workers on one node never race."""
    return Path(tempfile.mkdtemp(prefix="c2f-tiny-"))


TINY_CLASSES = 12
TINY_THINGS = "6-11"  # the tiny panoptic model's "thing" classes; 0-5 are "stuff"
SAM_TINY_IMG = 256


# Processor sizes. `aspect=True` keeps each image's aspect ratio (shortest edge 64, longest at most
# 128), as most real checkpoints' processors do; the default squashes every image to 128 x 128.
SQUARE = {"height": 128, "width": 128}
ASPECT = {"shortest_edge": 64, "longest_edge": 128}


def _id2label(n: int, names: list[str] | None = None) -> dict[int, str]:
    return {i: names[i] if names else f"random_{i}" for i in range(n)}


def _universal_common(num_labels: int, names: list[str] | None = None) -> dict:
    """Config fields Mask2Former and OneFormer share: a 4-stage toy Swin backbone, the labels, and
    toy transformer sizes."""
    from transformers import SwinConfig

    id2label = _id2label(num_labels, names)
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return {
        "backbone_config": backbone,
        "num_labels": num_labels,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
        "hidden_dim": 32,
        "num_queries": 16,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "dim_feedforward": 64,
        "encoder_feedforward_dim": 64,
        "num_attention_heads": 2,
        "init_std": 0.5,  # at the default 0.02 random queries all predict "no object"; 0.5 gives several segments
    }


def build_segformer_tiny(seed: int = 0, num_labels: int = TINY_CLASSES, aspect: bool = False):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    id2label = _id2label(num_labels)
    cfg = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return SegformerForSemanticSegmentation(cfg).eval(), SegformerImageProcessor(size=ASPECT if aspect else SQUARE)


def build_mask2former_tiny(
    seed: int = 0, num_labels: int = TINY_CLASSES, aspect: bool = False, names: list[str] | None = None
):
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
    )

    torch.manual_seed(seed)
    cfg = Mask2FormerConfig(
        **_universal_common(num_labels, names),
        mask_feature_size=32,
        feature_size=32,
        common_stride=4,
    )
    processor = Mask2FormerImageProcessor(size=ASPECT if aspect else SQUARE)
    return Mask2FormerForUniversalSegmentation(cfg).eval(), processor


def build_eomt_tiny(seed: int = 0, num_labels: int = TINY_CLASSES, names: list[str] | None = None):
    """A toy EoMT (2-layer ViT, 8-pixel patches, 64-pixel input) with its processor, which keeps the
    aspect ratio and pads to the square input like the released panoptic checkpoints' (do_pad)."""
    import torch
    from transformers import EomtConfig, EomtForUniversalSegmentation, EomtImageProcessor

    torch.manual_seed(seed)
    id2label = _id2label(num_labels, names)
    cfg = EomtConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=64,
        patch_size=8,
        num_blocks=1,
        num_queries=16,
        num_register_tokens=1,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        initializer_range=0.5,  # at the default 0.02 random queries all predict "no object"
    )
    model = EomtForUniversalSegmentation(cfg).eval()
    # The released checkpoints end training with mask annealing off: inference uses no attention masks.
    model.attn_mask_probs.zero_()
    processor = EomtImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}, do_pad=True)
    return model, processor


def save_oneformer_tiny(directory: Path, seed: int = 0, num_labels: int = TINY_CLASSES) -> Path:
    """A tiny OneFormer with its full processor: image processor (class info with thing/stuff, as
    OneFormer's metadata carries it) and a CLIP tokenizer over a toy vocabulary for the task text."""
    import json

    import torch
    from transformers import (
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        OneFormerProcessor,
    )

    from .hf import parse_ids

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [c + "</w>" for c in letters]:
        vocab[tok] = len(vocab)
    tokenizer = clip_tokenizer(directory, vocab)
    things = parse_ids(TINY_THINGS)
    info = {str(i): {"name": f"random_{i}", "isthing": int(i in things)} for i in range(num_labels)}
    (directory / "class_info.json").write_text(json.dumps(info))
    image_processor = OneFormerImageProcessor(
        repo_path=str(directory),
        class_info_file="class_info.json",
        num_text=4,
        size={"shortest_edge": 64, "longest_edge": 128},
    )
    processor = OneFormerProcessor(
        image_processor=image_processor, tokenizer=tokenizer, max_seq_length=16, task_seq_length=16
    )
    torch.manual_seed(seed)
    cfg = OneFormerConfig(
        **_universal_common(num_labels),
        mask_dim=32,
        conv_dim=32,
        text_encoder_width=32,
        text_encoder_num_layers=1,
        text_encoder_context_length=16,
        text_encoder_vocab_size=len(vocab),
        task_seq_len=16,
        max_seq_len=16,
        is_training=False,
        text_encoder_proj_layers=1,
        text_encoder_n_ctx=4,
    )
    model = OneFormerForUniversalSegmentation(cfg).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_sam_tiny(seed: int | None = None):
    """SAM's three modules at toy size (1 encoder block, 32 channels, 256-pixel input).

    At random weights SAM's decoder gives near-zero, checkerboard logits (every stability score 0,
    run-length codes of thousands of runs). Three changes make its masks look like a trained SAM's to
    the code that consumes them, smooth and confident: the transposed convolutions upsample by
    repetition, the hypernetwork outputs are scaled up, and point prompts get sharper positional codes."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if seed is not None:
        torch.manual_seed(seed)
    patch, dim = 16, 32
    emb = SAM_TINY_IMG // patch
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=1,
            embed_dim=dim,
            img_size=SAM_TINY_IMG,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[0],
            window_size=4,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(emb, emb),
            input_image_size=(SAM_TINY_IMG, SAM_TINY_IMG),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    with torch.no_grad():
        for layer in model.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.copy_(layer.weight.mean((2, 3), keepdim=True).expand_as(layer.weight))
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(150.0)
            mlp.layers[-1].bias.mul_(150.0)
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(5.0)
    return model


def clip_tokenizer(directory: Path, vocab: dict[str, int]):
    """A CLIP tokenizer over `vocab` without merges (every token whole), its files written to `directory`
    (CLIPTokenizer loads from files; the processor saved there later keeps them)."""
    import json

    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def save_hf(model, processor, directory: Path) -> Path:
    """`model` (None: a processor alone) and `processor` saved as a Hugging Face directory."""
    directory.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_sam_tiny(path: Path, seed: int = 0) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_sam_tiny(seed).state_dict(), path)
    return path


def write_tiny_models(root: Path, seed: int = 0, names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Save the tiny models (all, or those in `names`) under `root`, as a user would lay out real ones."""
    root = Path(root)
    builders = {
        "segformer": lambda: save_hf(*build_segformer_tiny(seed), root / "segformer"),
        "segformer_aspect": lambda: save_hf(*build_segformer_tiny(seed, aspect=True), root / "segformer_aspect"),
        "mask2former": lambda: save_hf(*build_mask2former_tiny(seed), root / "mask2former"),
        "mask2former_aspect": lambda: save_hf(*build_mask2former_tiny(seed, aspect=True), root / "mask2former_aspect"),
        "oneformer": lambda: save_oneformer_tiny(root / "oneformer", seed),
        "eomt": lambda: save_hf(*build_eomt_tiny(seed), root / "eomt"),
        "sam": lambda: save_sam_tiny(root / "sam_vit_tiny.pth", seed),
    }
    return {name: build() for name, build in builders.items() if names is None or name in names}


def synthetic_query_logits(batch: int, queries: int, classes: int, size: tuple[int, int], seed: int = 0):
    """Outputs shaped like a trained mask-classification model's, for post-processing tests and benches
    (random tiny models give one or two segments per image): class_logits [B, Q, C+1] peaked on one
    class per query (70% of the queries on "no object"), mask_logits [B, Q, h, w] soft discs of
    random centre and radius (about +8 inside, -8 outside), overlapping as real queries do."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = size
    ys = torch.linspace(0, 1, h)[:, None]
    xs = torch.linspace(0, 1, w)[None, :]
    cy, cx = torch.rand(2, batch, queries, 1, 1, generator=g)
    radius = 0.05 + 0.15 * torch.rand(batch, queries, 1, 1, generator=g)
    dist2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / radius**2
    # Noise as smooth as a real model's logits (it varies over ~1/8 of the map, not per pixel).
    noise = torch.randn(batch, queries, max(2, h // 8), max(2, w // 8), generator=g)
    noise = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    masks = 8.0 * (1.0 - dist2) + 2.0 * noise
    cls = torch.randn(batch, queries, classes + 1, generator=g)
    label = torch.randint(0, classes, (batch, queries), generator=g)
    label = torch.where(torch.rand(batch, queries, generator=g) < 0.7, classes, label)
    cls.scatter_add_(2, label[..., None], 4.0 + 8.0 * torch.rand(batch, queries, 1, generator=g))
    return cls, masks


def synthetic_semantic_logits(batch: int, classes: int, size: tuple[int, int], seed: int = 0, present: int = 16):
    """Per-pixel class logits [B, C, h, w] shaped like a trained semantic model's (SegFormer's), for
    post-processing tests and benches: `present` classes per image whose smooth fields (varying over
    ~1/6 of the map) take turns winning, so the argmax is a dozen or more regions with smooth borders,
    and every other class lies well below; smooth noise on all. White noise, by contrast, has a class
    border in every cell, which no real model's output has."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    h, w = size

    def smooth(n: int, cells: int) -> torch.Tensor:  # [B, n, h, w], varying over 1/cells of the map
        z = torch.randn(batch, n, cells, cells, generator=g)
        return F.interpolate(z, size=(h, w), mode="bicubic", align_corners=False)

    logits = -4.0 + 2.0 * smooth(classes, max(2, h // 8))
    chosen = torch.rand(batch, classes, generator=g).argsort(1)[:, :present]
    fields = 4.0 + 6.0 * smooth(present, 6) + smooth(present, max(2, h // 8))
    return logits.scatter_(1, chosen[..., None, None].expand(-1, -1, h, w), fields)
