"""Messages instead of tracebacks (issue class 10, the parts outside the trainer): `--help` of every
subcommand and of the `ray job submit` / `torchrun` entry points, and one line with the right exit
code for the mistakes a user makes first."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from c2f.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: c2f {command}") and "--" in out


def test_label_help_documents_the_input_limits(capsys):
    with pytest.raises(SystemExit):
        main(["label", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-pixels INT" in out and "(default: 50000000)" in out and "--max-input-bytes INT" in out


def run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO, **kw)


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "c2f", "label", "--help"],  # what `ray job submit ... -- python -m c2f label` runs
        ["-m", "c2f", "pretrain", "--help"],  # what `torchrun -m c2f pretrain` runs
        [str(REPO / "c2f" / "submit_label.py"), "--help"],  # what `ray submit cluster.yaml` runs
    ],
    ids=["ray-job-submit", "torchrun", "ray-submit"],
)
def test_help_of_the_cluster_entry_points(argv):
    r = run([sys.executable, *argv])
    assert r.returncode == 0 and r.stdout.startswith("usage: ") and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_inspect_without_shards_is_one_line(tmp_path, capsys):
    (tmp_path / "README.txt").write_text("no shards here")
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: no shards in {tmp_path} (no PREFIX-NNNNNN.tar files)\n"
    assert main(["inspect", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 1
    assert capsys.readouterr().err == f"error: no such file or directory: {tmp_path / 'missing'}\n"


def test_label_into_a_read_only_directory_is_one_line(sample_tree):
    """As an unprivileged user (root writes anywhere: the test drops to `nobody` when it is root)."""
    base = Path(tempfile.mkdtemp(prefix="c2f-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        drop = []
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv to drop privileges")
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        for out in (ro, ro / "sub"):
            r = run([*drop, sys.executable, "-m", "c2f", "label", str(sample_tree), str(out), "--preset", "empty"])
            assert r.returncode == 2, r.stderr[-2000:]
            assert r.stderr.strip() == f"error: cannot write to output directory {out}: Permission denied"
    finally:
        (base / "ro").chmod(0o755)
        for p in sorted(base.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        base.rmdir()
