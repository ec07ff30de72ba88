"""configs/*.args parse, and the ablation arms differ only where they say; docs tables match the code."""

import dataclasses
from pathlib import Path

import pytest

from c2f.cli import build_parser
from c2f.flags import from_args
from c2fmae.data import DataSpec
from c2fmae.train import TrainConfig, model_config_for

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARMS = {p.stem: p for p in sorted(CONFIGS.glob("*.args"))}
ABLATED = {"stages", "masking", "decoder", "cascade_link", "decoder_depths", "instance_target"}


def parse(path: Path) -> TrainConfig:
    ns = build_parser().parse_args(["pretrain", "SHARDS", *path.read_text().split()])
    return from_args(TrainConfig, ns)


def test_every_arm_parses_and_shares_the_recipe():
    assert {"vit_base_mae", "vit_base_cascade_add", "vit_base_cascade_xattn", "vit_base_parallel"} <= set(ARMS)
    cfgs = {name: dataclasses.asdict(parse(path)) for name, path in ARMS.items()}
    ref = cfgs["vit_base_mae"]
    for name, cfg in cfgs.items():
        differs = {k for k in cfg if cfg[k] != ref[k]}
        assert differs <= ABLATED, (name, differs)
    assert ref["batch_size"] * ref["accum_steps"] * 8 == 4096 and ref["warmup_epochs"] == 40


SPEC = DataSpec(150, 255, 1000, 1_281_167)
PARALLEL = ("vit_base_parallel", "vit_base_parallel_deep")


@pytest.mark.parametrize("name", sorted(set(ARMS) - {"vit_base_parallel_deep"}))
def test_arms_have_maes_decoder_blocks(name):
    m = model_config_for(parse(ARMS[name]), SPEC)
    assert (m.decoder_dim, m.decoder_heads, sum(m.decoder_depths)) == (512, 16, 8)
    assert m.decoder_depths == ((8,) if m.stages == ("pixel",) else (2, 2, 4))


def test_the_deep_parallel_arm_gives_every_head_its_cascaded_path():
    """The fair ablation: the cascade's semantic, instance and pixel predictions pass through 2, 4
    and 8 blocks; the same-blocks parallel arm gives its heads 2, 2, 4 (linking and depth
    confounded); the deep parallel arm gives them 2, 4, 8 (linking alone)."""
    from c2fmae.model import path_depths

    cascade, same, deep = (model_config_for(parse(ARMS[n]), SPEC) for n in ("vit_base_cascade_add", *PARALLEL))
    assert path_depths(cascade) == path_depths(deep) == (2, 4, 8) and not deep.cascade
    assert path_depths(same) == (2, 2, 4) and not same.cascade
    assert (deep.decoder_dim, deep.decoder_heads) == (cascade.decoder_dim, cascade.decoder_heads)


def test_the_target_arm_changes_the_instance_target_only():
    local, centre = (parse(ARMS[n]) for n in ("vit_base_cascade_local", "vit_base_cascade_add"))
    assert (local.instance_target, centre.instance_target) == ("local", "centre")
    assert {k for k, v in dataclasses.asdict(local).items() if v != getattr(centre, k)} == {"instance_target"}


def test_generated_tables_in_the_docs_are_current():
    from c2fmae import doc_tables

    text = doc_tables.DOC.read_text()
    assert text.count("<!-- generated:") == 2
    assert doc_tables.render(text) == text, "docs/TRAINER.md is stale: run python -m c2fmae.doc_tables"


METHOD_RECIPES = {p.stem: p for p in sorted((CONFIGS / "methods").glob("*.args"))}


@pytest.mark.parametrize("name", sorted(METHOD_RECIPES))
def test_method_recipes_parse_and_build_at_vit_base(name):
    import torch

    from c2fmae.model import C2FMAE
    from c2fmae.train import with_method

    cfg = with_method(parse(METHOD_RECIPES[name]))
    ref = parse(ARMS["vit_base_mae"])
    assert (cfg.model, cfg.epochs, cfg.blr) == (ref.model, ref.epochs, ref.blr)
    assert cfg.batch_size * cfg.accum_steps == ref.batch_size * ref.accum_steps  # 4096 images on 8 GPUs
    m = model_config_for(cfg, DataSpec(150, 255, 1000, 1_281_167))
    assert m.embed_dim == 768 and (m.decoder_dim, sum(m.decoder_depths)) == (512, 8)
    with torch.device("meta"):
        model = C2FMAE(m)
    assert (model.teacher is not None) == (cfg.method == "folk")
    assert (model.lowres_embed is not None) == (cfg.method == "srmae")


def test_every_method_has_a_recipe():
    methods = {parse(p).method for p in [*ARMS.values(), *METHOD_RECIPES.values()]}
    assert {"smir", "folk", "srmae"} <= methods  # MAE and C2FMAE: vit_base_mae, vit_base_cascade_add
