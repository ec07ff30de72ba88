"""Hostile checkpoints give one line and an exit code; a resumed run logs each step once; --help works."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from c2f.cli import main as c2f
from c2fmae.checkpoint import load_checkpoint

MICRO = ["--model", "c2fmae_vit_micro", "--workers", "0", "--vis-every", "0", "--log-every", "1000"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic shards and a genuine 2-step checkpoint trained on them."""
    from shards.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("ckpt")
    shards = root / "shards"
    write_synthetic_dataset(shards, 8, 4, seed=0)
    run = root / "run"
    assert c2f(["pretrain", str(shards), "--output", str(run), "--steps", "2", "--batch-size", "4", *MICRO]) == 0
    return shards, run / "checkpoint.pt"


def _resume(shards, out, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = c2f(["pretrain", str(shards), "--output", str(out), "--resume", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    return code, err


def _corrupt(good, path):
    path.write_bytes(os.urandom(4096))


def _empty(good, path):
    path.write_bytes(b"")


def _first_half(good, path):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tail_cut(good, path):
    path.write_bytes(good.read_bytes()[:-1000])


def _a_list(good, path):
    torch.save([1, 2, 3], path)


def _weights_only(good, path):  # a plain weights file: no optimizer, step or config
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, "epoch": 3}, path)


def _mae_style(good, path):  # facebookresearch/mae's layout pickles its argparse Namespace
    import argparse

    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, "epoch": 3, "args": argparse.Namespace(lr=1)}, path)


def _json_text(good, path):
    path.write_text(json.dumps({"model": "c2fmae_vit_micro", "step": 2}))


def _other_weights(good, path):  # a c2f checkpoint whose weights are another decoder's
    state = torch.load(good, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("stages.semantic")}
    torch.save(state, path)


def _newer_version(good, path):  # a config field this version does not know
    state = torch.load(good, weights_only=True)
    state["config"]["teacher_momentum"] = 0.996
    torch.save(state, path)


@pytest.mark.parametrize(
    "make, code, phrase",
    [
        (_corrupt, 1, "not a readable checkpoint"),
        (_empty, 1, "not a readable checkpoint"),
        (_first_half, 1, "not a readable checkpoint"),
        (_tail_cut, 1, "not a readable checkpoint"),
        (_a_list, 1, "not a c2f pretrain checkpoint"),
        (_weights_only, 1, "not a c2f pretrain checkpoint (no optimizer, step, config, model_config)"),
        (_mae_style, 1, "safe weights-only load refuses: argparse.Namespace"),
        (_json_text, 1, "corrupt or not a torch file"),
        (_other_weights, 1, "weights do not match"),
        (_newer_version, 1, "does not know: teacher_momentum"),
    ],
)
def test_resume_refuses_a_bad_checkpoint_in_one_line(trained, tmp_path, capsys, make, code, phrase):
    shards, good = trained
    out = tmp_path / "run"
    out.mkdir()
    make(good, out / "checkpoint.pt")
    got, err = _resume(shards, out, capsys)
    assert got == code, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and phrase in err, err
    assert "Traceback" not in err


def test_resume_refuses_a_checkpoint_of_another_label_space(trained, tmp_path, capsys):
    shards, good = trained
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["label_space"]["semantic"] = {str(i): f"c{i}" for i in range(10)}
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(good, out / "checkpoint.pt")
    got, err = _resume(other, out, capsys)
    assert got == 2 and "another model or label space" in err and "num_classes 6 vs 10" in err, err
    assert len(err.splitlines()) == 1


def test_resume_into_an_empty_directory_is_a_usage_error(trained, tmp_path, capsys):
    got, err = _resume(trained[0], tmp_path / "none", capsys)
    assert got == 2 and "no checkpoint at" in err


@pytest.mark.parametrize("make, code", [(_first_half, 1), (_weights_only, 1), (_other_weights, 1)])
def test_probe_refuses_a_bad_checkpoint_in_one_line(trained, tmp_path, capsys, make, code):
    shards, good = trained
    bad = tmp_path / "bad.pt"
    make(good, bad)
    capsys.readouterr()
    assert c2f(["probe", str(shards), "--checkpoint", str(bad)]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(bad) in err


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_logs_each_step_once(trained, tmp_path):
    """A crash after step 7 with the last checkpoint at step 6: the resumed run replays 6 and 7,
    and metrics.jsonl still holds every step exactly once, with the replayed values."""
    shards, _ = trained
    out = tmp_path / "run"
    common = [str(shards), "--output", str(out), "--steps", "8", "--batch-size", "4", "--ckpt-every", "3", *MICRO]
    assert c2f(["pretrain", *common, "--stop-after", "6"]) == 0
    at_six = tmp_path / "at6.pt"
    shutil.copy(out / "checkpoint.pt", at_six)
    assert c2f(["pretrain", str(shards), "--output", str(out), "--resume", "--workers", "0"]) == 0
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == list(range(8)) and load_checkpoint(out / "checkpoint.pt")["step"] == 8
    shutil.copy(at_six, out / "checkpoint.pt")  # as if the process died after logging step 7
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lr": 0.1, "loss_to')  # and tore the last line
    assert c2f(["pretrain", str(shards), "--output", str(out), "--resume", "--workers", "0"]) == 0
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == list(range(8))
    for a, b in zip(first, again, strict=True):
        assert a["loss_total"] == pytest.approx(b["loss_total"], rel=1e-5)


@pytest.mark.parametrize("command", ["pretrain", "probe"])
def test_help_of_the_trainer_commands(command, capsys):
    with pytest.raises(SystemExit) as e:
        c2f([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--batch-size" in out and ("--warmup-steps" in out or command == "probe")


def test_help_through_the_torchrun_entry_point():
    """`torchrun -m c2f pretrain` runs `python -m c2f` in each process: its --help must work too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "c2f", "pretrain", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "--resume" in r.stdout, r.stderr[-2000:]


def test_resume_refuses_other_shards_that_change_the_schedule(trained, tmp_path, capsys):
    """Same label space, three times the samples: the epoch length (and so the data order and LR
    schedule) the checkpoint was trained with no longer holds."""
    from shards.synthetic import write_synthetic_dataset

    shards, good = trained
    bigger = tmp_path / "bigger"
    write_synthetic_dataset(bigger, 24, 4, seed=5)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(good, out / "checkpoint.pt")
    got, err = _resume(bigger, out, capsys)
    assert got == 2 and "another schedule" in err and len(err.splitlines()) == 1, err


OLD_MEANING = ["--instance-target", "local", "--folk-views", "1", "--folk-filters", "com", "--decode", "cpu"]


@pytest.mark.parametrize("flags", [OLD_MEANING, ["--method", "folk", *OLD_MEANING]], ids=["c2fmae", "folk"])
def test_a_checkpoint_older_than_a_field_resumes_as_it_was_configured(trained, tmp_path, flags):
    """Checkpoints written before `instance_target`, FOLK's views and filters, `decode` and the
    frequency loss existed hold none of them: their absence means what those runs did (the local
    target, one view, com alone, CPU decoding), not today's defaults, and the resumed run equals
    one resumed from the same checkpoint with the fields written out."""
    from c2fmae.model import ModelConfig
    from c2fmae.train import TrainConfig

    shards, _ = trained
    new, old = tmp_path / "new", tmp_path / "old"
    common = [str(shards), "--steps", "4", "--batch-size", "4", *flags, *MICRO]
    assert c2f(["pretrain", *common, "--output", str(new), "--stop-after", "2"]) == 0
    shutil.copytree(new, old)
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    for k in TrainConfig.ABSENT:
        del state["config"][k]
    for k in ModelConfig.ABSENT:
        del state["model_config"][k]
    (old / "checkpoint.pt").unlink()  # a hard link to the numbered one: write a file of its own
    torch.save(state, old / "checkpoint.pt")
    for out in (new, old):
        assert c2f(["pretrain", str(shards), "--output", str(out), "--resume", "--workers", "0"]) == 0
    a, b = load_checkpoint(new / "checkpoint.pt"), load_checkpoint(old / "checkpoint.pt")
    assert a["step"] == b["step"] == 4 and a["model_config"] == b["model_config"]
    assert {**a["config"], "output": ""} == {**b["config"], "output": ""}
    assert b["model_config"]["instance_target"] == "local" and b["config"]["decode"] == "cpu"
    assert (b["config"]["folk_views"], b["config"]["folk_filters"]) == (1, "com")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
