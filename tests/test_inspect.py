import numpy as np
from PIL import Image

from c2f.cli import main


def test_inspect_renders_grid_and_stats(synthetic_ds, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["inspect", str(synthetic_ds), "--out", str(out), "--samples", "3"]) == 0
    text = capsys.readouterr().out
    assert "3 shards, 12 samples" in text and "road" in text and "instances per image" in text
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] >= 3 * 160 and grid.shape[1] > 3 * 224
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 100  # real pixels, not a blank canvas


def test_inspect_one_shard_seeded(synthetic_ds, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert (
        main(["inspect", str(synthetic_ds / "syn-000002.tar"), "--out", str(out), "--seed", "3", "--samples", "2"]) == 0
    )
    assert "1 shards, 4 samples" in capsys.readouterr().out and out.exists()


def test_inspect_bad_path_and_truncated(synthetic_ds, tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 1
    shard = synthetic_ds / "syn-000000.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    assert main(["inspect", str(shard), "--out", str(tmp_path / "x.png")]) == 1
    assert "truncated" in capsys.readouterr().err
