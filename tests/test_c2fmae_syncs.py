"""The training step never makes the host wait for the device, for every method: counted on the
code path a GPU runs (bf16 autocast, the fused optimizer, batches through to_device / the device
decoder / prepare, SMIR's round table), on CPU, by shards.opcount.SyncCounter."""

import contextlib

import pytest
import torch

from c2fmae.data import StreamConfig, TrainStream, device_batches
from c2fmae.engine import Loop, Schedule, make_optimizer, train_steps
from c2fmae.logs import RunLog
from c2fmae.masking import Curriculum, Masking
from c2fmae.methods import METHODS, MethodSettings
from c2fmae.model import C2FMAE, model_config
from c2fmae.rounds import Scores, with_scores
from shards.opcount import SyncCounter
from shards.reader import expand_urls


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    """Workers' compact batches of synthetic scenes (made outside the count: the workers are other
    processes), for each decode path and view count."""
    from shards.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("syncs")
    write_synthetic_dataset(root, 16, 8, seed=2, size=(96, 128))
    urls = tuple(expand_urls(str(root)))
    out = {}
    for decode in ("cpu", "gpu"):
        for views in (1, 2):
            keys = None
            cfg = StreamConfig(urls, 4, 100, seed=0, img_size=64, shuffle=4, views=views, decode=decode)
            if views == 1:  # SMIR's rounds: the workers put each sample's row in the batch
                stream = iter(TrainStream(cfg))
                keys = sorted({k for _ in range(2) for k in next(stream)["key"]})
                rows = {k: i for i, k in enumerate(keys)}
                cfg = StreamConfig(**{**cfg.__dict__, "rows": rows, "blank_row": len(keys)})
            stream = iter(TrainStream(cfg))
            out[decode, views] = ([next(stream) for _ in range(6)], keys)
    return out


ARMS = {
    "mae": {},
    "c2fmae": {},
    "c2fmae-selective": {"curriculum": (0.0, 0.33, 0.67, 1.0)},  # SMIR's online passes as a 4th phase
    "smir": {},
    "smir-rounds": {"rounds": True},
    "folk": {"views": 2},
    "folk-one-view": {"views": 1},
    "srmae": {},
}


def _run(compact, arm: str, decode: str, device: torch.device, tmp_path):
    """Three steps of `arm` on `device` (the first unwatched: lazy initialisation, the first log
    line); -> (the sync counter of the last two, their last output)."""
    torch.manual_seed(0)
    spec = ARMS[arm]
    name = arm.split("-")[0]
    d = METHODS[name]
    stages = ("semantic", "instance", "pixel")
    mcfg = model_config(
        "c2fmae_vit_micro",
        img_size=64,
        num_classes=8,
        stages=stages,
        distill=name == "folk",
        lowres_factor=4 if name == "srmae" else 0,
    )
    model = C2FMAE(mcfg).to(device)
    views = spec.get("views", 1)
    method = MethodSettings(name, selective_rounds=2 if spec.get("rounds") else 0, folk_views=views)
    strategy = "curriculum" if name == "c2fmae" else d.masking
    masking = Masking(strategy, d.mask_ratio, Curriculum(spec.get("curriculum", (0.0, 0.5, 1.0))))
    loop = Loop(Schedule(6, 1, 1e-3), masking, accum_steps=2, grad_clip=1.0, method=method)
    batches_cpu, keys = compact[decode, views]
    if device.type == "cuda":
        pin = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches_cpu]
        batches_cpu = pin
    batches = device_batches(iter(batches_cpu), device, model.cells, mcfg.instance_target, 64)
    if spec.get("rounds"):
        scores = Scores(keys, torch.rand(len(keys), 4, 4).half())
        batches = with_scores(batches, scores.table(device), model.grid)
    log = RunLog(tmp_path, 0, 1, 0, log_every=1000, vis_every=0, curriculum=None)
    steps = train_steps(model, make_optimizer(model, 0.05, 1e-3), batches, range(3), loop, keep=lambda s: False)
    log.step(next(steps), 0.0, mcfg, False)  # the first step: lazy initialisation and the first log line
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if device.type == "cpu" else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # and on CUDA, any sync is an error
    try:
        with amp, SyncCounter() as syncs:  # on CPU: bf16 autocast, as the engine runs CUDA
            for out in steps:
                log.step(out, 0.5, mcfg, False)  # neither a log nor a picture step
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    log.close()
    return syncs, out


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize("arm", sorted(ARMS))
def test_no_host_sync_in_a_training_step(compact, arm, decode, tmp_path):
    syncs, out = _run(compact, arm, decode, torch.device("cpu"), tmp_path)
    assert syncs.total == 0, (dict(syncs.events), syncs.events.where)
    assert out.batch is None and out.preds is None  # nothing of the step outlives it
    assert torch.isfinite(out.losses["total"]).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize("arm", sorted(ARMS))
def test_no_host_sync_on_cuda(compact, arm, decode, tmp_path):
    """The same steps on a GPU under CUDA's sync debug mode (a sync raises). nvJPEG waits for its
    own stream at the end of a decode (not the training stream): the sync debug mode does not
    count that."""
    syncs, out = _run(compact, arm, decode, torch.device("cuda"), tmp_path)
    assert syncs.total == 0, (dict(syncs.events), syncs.events.where)
    assert torch.isfinite(out.losses["total"]).item()


def test_the_counter_sees_each_kind_of_sync():
    """The counter is not blind: every pattern a step must avoid is counted on CPU."""
    x = torch.randn(8)
    cases = {
        "item": lambda: x.sum().item(),
        "bool": lambda: bool(x[0] > 0),
        "tolist": lambda: x.tolist(),
        "cpu": lambda: x.cpu(),
        "nonzero": lambda: x.nonzero(),
        "boolean index": lambda: x[x > 0],
        "from a list": lambda: torch.tensor([1.0, 2.0]),
        "blocking to": lambda: x.to("cpu"),
        "unique": lambda: x.unique(),
    }
    for what, fn in cases.items():
        with SyncCounter() as syncs:
            fn()
        assert syncs.total >= 1, what
    with SyncCounter() as syncs:  # and the patterns a step uses instead
        x[0] = 1.0
        torch.where(x > 0, x, 0.0).sum()
        x.to("cpu", non_blocking=True)
        x.index_select(0, torch.arange(3))
    assert syncs.total == 0, dict(syncs.events)
