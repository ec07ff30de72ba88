"""Tiny, randomly initialised models of the text-prompted presets' architectures: Grounding DINO (a toy
Swin + a one-layer BERT), SAM-HQ and SAM 3, with processors whose tokenizers are built from small
vocabularies. For tests, CI and trying the presets out: the same classes the real checkpoints load
into, saved like them and loaded back through the production loaders (labeler/grounded.py,
labeler/sam3.py). Their labels are random; every manifest built with them says so.
"""

from __future__ import annotations

import json
from pathlib import Path

# Grounding DINO splits phrases at fixed token ids (transformers' SPECIAL_TOKENS: bert-base-uncased's
# [CLS], [SEP], '.', '?'), so a tokenizer of any vocabulary must keep them at these ids.
BERT_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def bert_vocab(words: list[str] = ()) -> dict[str, int]:
    """A WordPiece vocabulary with BERT's special ids where Grounding DINO expects them, single
    letters (so any word tokenizes) and `words` as whole tokens (so prompts have realistic lengths)."""
    tokens = [*LETTERS, *(f"##{c}" for c in LETTERS), *"0123456789,-'", *sorted({w.lower() for w in words})]
    size = max(1100, len(tokens) + 110)
    by_id = {i: f"[unused{i}]" for i in range(size)}
    by_id.update({i: t for t, i in BERT_SPECIAL.items()})
    free = (i for i in range(104, size) if i not in BERT_SPECIAL.values())
    for t, i in zip(tokens, free, strict=False):
        by_id[i] = t
    return {t: i for i, t in by_id.items()}


def build_grounding_dino_tiny(seed: int = 0, words: list[str] = ()):
    """A toy Grounding DINO (Swin 16 wide, BERT 1 layer, 16 queries, 128..256 px input) and its processor."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    vocab = bert_vocab(words)
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=128, out_indices=[2, 3, 4]
    )
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    cfg = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=16,
        encoder_layers=1,
        decoder_layers=2,  # one decoder layer breaks the box head's weight tying
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=64,
    )
    model = GroundingDinoForObjectDetection(cfg).eval()
    with torch.no_grad():
        # Random query-text dot products are +-10 (every box scores ~1): scaled so that scores spread
        # over (0, 1) and the thresholds decide, as with a trained model.
        last = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
        last.weight.mul_(0.15)
        last.bias.zero_()
    processor = GroundingDinoProcessor(
        # 128 px: the smallest input whose extra (1/64) feature level is wider than one cell
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 256}),
        tokenizer=BertTokenizer(vocab=vocab),
    )
    return model, processor


def build_sam_hq_tiny(seed: int = 0):
    """A toy SAM-HQ (2-block ViT 32 wide, 256 px input, 64x64 low-res masks) and its image processor.
    The mask decoder's upsampling is made smooth (transposed convolutions repeat, as in
    labeler/tiny.py's SAM) so that random masks are blobs, not checkerboards."""
    import torch
    from transformers import (
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQModel,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
        SamImageProcessor,
    )

    torch.manual_seed(seed)
    cfg = SamHQConfig(
        vision_config=SamHQVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=256,
            patch_size=16,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamHQPromptEncoderConfig(
            hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamHQMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, vit_dim=32, num_hidden_layers=1
        ),
    )
    model = SamHQModel(cfg).eval()
    with torch.no_grad():
        for m in model.mask_decoder.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.copy_(m.weight.mean((2, 3), keepdim=True).expand_as(m.weight))
    processor = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    return model, processor


def build_sam_box_tiny(seed: int = 0):
    """A toy SAM (transformers' SamModel, the `--box-sam-model` option without HQ) of the same size."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=256,
            patch_size=16,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, num_hidden_layers=1
        ),
    )
    model = SamModel(cfg).eval()
    processor = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    return model, processor


def clip_vocab(words: list[str] = ()) -> dict[str, int]:
    """A byte-pair-free CLIP vocabulary: letters, end-of-word letters, punctuation, and `words`."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in [*LETTERS, *(c + "</w>" for c in LETTERS), ".</w>", ",</w>", "-</w>", "'</w>"]:
        vocab[tok] = len(vocab)
    for w in sorted({w.lower() + "</w>" for w in words} - set(vocab)):
        vocab[w] = len(vocab)
    return vocab


def build_sam3_tiny(directory: Path, seed: int = 0, words: list[str] = ()):
    """A toy SAM 3 (2-block ViT 32 wide at 112 px, a 1-layer CLIP text encoder, 16 queries) and its
    processor; the CLIP tokenizer's files are written to `directory` (it loads from files)."""
    import torch
    from transformers import (
        CLIPTokenizer,
        Sam3Config,
        Sam3ImageProcessor,
        Sam3Model,
        Sam3Processor,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = clip_vocab(words)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(seed)
    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=112,
        patch_size=14,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=56,
    )
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    cfg = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=vit, fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]]
        ),
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        geometry_encoder_config={**small, "num_layers": 1},
        detr_encoder_config={**small, "num_layers": 1},
        detr_decoder_config={**small, "num_layers": 1, "num_queries": 16},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )
    model = Sam3Model(cfg).eval()
    with torch.no_grad():  # at init every query scores sigmoid(~0): spread them as a trained model's
        model.dot_product_scoring.query_proj.weight.mul_(6.0)
        model.dot_product_scoring.text_proj.weight.mul_(6.0)
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    image_processor = Sam3ImageProcessor(size={"height": 112, "width": 112})
    processor = Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


def save_ade_segformer_tiny(directory: Path, seed: int = 0) -> Path:
    """A tiny random SegFormer with ADE20K-150's class names: a stuff model for the tiny presets."""
    from .label_spaces import ADE20K_150_PANOPTIC
    from .tiny import build_segformer_tiny, save_hf

    model, processor = build_segformer_tiny(seed, num_labels=len(ADE20K_150_PANOPTIC), aspect=True)
    model.config.id2label = {i: name for i, _, _, name in ADE20K_150_PANOPTIC}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    return save_hf(model, processor, directory)


def save_grounded_tiny(
    root: Path, seed: int = 0, words: list[str] = (), names: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """The tiny models (all, or those in `names`) under `root`: grounding-dino/, sam-hq/, sam/, sam3/,
    as a user lays out real ones."""
    from .tiny import save_hf

    root = Path(root)
    builders = {
        "grounding-dino": lambda: save_hf(*build_grounding_dino_tiny(seed, words), root / "grounding-dino"),
        "sam-hq": lambda: save_hf(*build_sam_hq_tiny(seed), root / "sam-hq"),
        "sam": lambda: save_hf(*build_sam_box_tiny(seed), root / "sam"),
        "sam3": lambda: save_hf(*build_sam3_tiny(root / "sam3", seed, words), root / "sam3"),
    }
    return {name: build() for name, build in builders.items() if names is None or name in names}
