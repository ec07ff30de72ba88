"""Randomly initialised models of the text-prompted presets' architectures: Grounding DINO, SAM-HQ (or
plain SAM) and SAM 3, with processors whose tokenizers are built from small vocabularies; one builder per
architecture, in a tiny size (a toy Swin + a one-layer BERT, 2-block ViTs: for tests, CI and trying the
presets out) and at the released sizes (the GPU and FLOPs benches). The same classes the real
checkpoints load into, saved like them and loaded back through the production loaders
(labeler/grounded.py, labeler/sam3.py). Their labels are random; every manifest built with them says so.
"""

from __future__ import annotations

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


def imagenet_words() -> list[str]:
    """The words of the ImageNet-1K lemmas: a tokenizer over them gives prompts of realistic length."""
    from .imagenet_space import imagenet_classes

    return sorted({w for c in imagenet_classes() for p in c.phrases for w in p.lower().split()})


# Swin-B at 384 px, window 12: Grounding DINO's larger released backbone (Swin-T is transformers' default).
SWIN_B_384 = {
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "window_size": 12,
    "image_size": 384,
    "out_indices": [2, 3, 4],
}


def build_grounding_dino(size: str = "tiny", seed: int = 0, words: list[str] = ()):
    """Grounding DINO at random weights and its processor, whose tokenizer knows `words` (bert_vocab).
    `size`: "tiny" (Swin 16 wide, BERT 1 layer, 16 queries, 128..256 px input), or the released
    architectures "swin-t" (transformers' default config) and "swin-b" (SWIN_B_384), short side 800."""
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
    if size != "tiny":
        backbone = {"swin-t": None, "swin-b": SwinConfig(**SWIN_B_384)}[size]
        model = GroundingDinoForObjectDetection(GroundingDinoConfig(backbone_config=backbone)).eval()
        return model, GroundingDinoProcessor(GroundingDinoImageProcessor(), BertTokenizer(vocab=vocab))
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


def build_box_sam(size: str = "tiny", hq: bool = True, seed: int = 0):
    """The box-prompted SAM at random weights and its image processor: SAM-HQ (`hq`) or plain SAM
    (transformers' SamModel, the `--box-sam-model` option without HQ). `size`: "tiny" (2-block ViT 32
    wide, 256 px input, 64x64 low-res masks) or "vit-h" (the released ViT-H, 1024 px). The tiny SAM-HQ's
    mask upsampling is made smooth (transposed convolutions repeat, as in labeler/tiny.py's SAM) so
    that random masks are blobs, not checkerboards."""
    import torch
    import transformers as tf

    prefix = "SamHQ" if hq else "Sam"
    vision_cls, decoder_cls = getattr(tf, f"{prefix}VisionConfig"), getattr(tf, f"{prefix}MaskDecoderConfig")
    config_cls, model_cls = getattr(tf, f"{prefix}Config"), getattr(tf, f"{prefix}Model")
    torch.manual_seed(seed)
    if size == "vit-h":
        vision = vision_cls(
            hidden_size=1280,
            num_hidden_layers=32,
            num_attention_heads=16,
            global_attn_indexes=[7, 15, 23, 31],
            mlp_dim=5120,
        )
        decoder = decoder_cls(vit_dim=1280) if hq else decoder_cls()
        model = model_cls(config_cls(vision_config=vision, mask_decoder_config=decoder)).eval()
        return model, tf.SamImageProcessor()
    cfg = config_cls(
        vision_config=vision_cls(
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
        prompt_encoder_config=getattr(tf, f"{prefix}PromptEncoderConfig")(
            hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=decoder_cls(
            hidden_size=32,
            mlp_dim=64,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
            num_hidden_layers=1,
            **({"vit_dim": 32} if hq else {}),
        ),
    )
    model = model_cls(cfg).eval()
    if hq:
        with torch.no_grad():
            for m in model.mask_decoder.modules():
                if isinstance(m, torch.nn.ConvTranspose2d):
                    m.weight.copy_(m.weight.mean((2, 3), keepdim=True).expand_as(m.weight))
    processor = tf.SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    return model, processor


def clip_vocab(words: list[str] = ()) -> dict[str, int]:
    """A byte-pair-free CLIP vocabulary: letters, end-of-word letters, punctuation, and `words`."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in [*LETTERS, *(c + "</w>" for c in LETTERS), ".</w>", ",</w>", "-</w>", "'</w>"]:
        vocab[tok] = len(vocab)
    for w in sorted({w.lower() + "</w>" for w in words} - set(vocab)):
        vocab[w] = len(vocab)
    return vocab


def build_sam3(directory: Path, size: str = "tiny", seed: int = 0, words: list[str] = ()):
    """SAM 3 at random weights and its processor, whose CLIP tokenizer knows `words` (its files are
    written to `directory`: it loads from files). `size`: "tiny" (2-block ViT 32 wide at 112 px, a
    1-layer CLIP text encoder, 16 queries) or "full" (transformers' default config: the released model)."""
    import torch
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor, Sam3VisionConfig, Sam3ViTConfig

    from .tiny import clip_tokenizer

    vocab = clip_vocab(words)
    tokenizer = clip_tokenizer(directory, vocab)
    torch.manual_seed(seed)
    if size == "full":
        return Sam3Model(Sam3Config()).eval(), Sam3Processor(Sam3ImageProcessor(), tokenizer)
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
    image_processor = Sam3ImageProcessor(size={"height": 112, "width": 112})
    return model, Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)


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
        "grounding-dino": lambda: save_hf(*build_grounding_dino("tiny", seed, words), root / "grounding-dino"),
        "sam-hq": lambda: save_hf(*build_box_sam("tiny", True, seed), root / "sam-hq"),
        "sam": lambda: save_hf(*build_box_sam("tiny", False, seed), root / "sam"),
        "sam3": lambda: save_hf(*build_sam3(root / "sam3", "tiny", seed, words), root / "sam3"),
    }
    return {name: build() for name, build in builders.items() if names is None or name in names}
