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


def test_grid_rows_take_their_own_height_and_many_samples_fill_columns():
    from shards.inspect import LEGEND_W, ROWS_PER_COLUMN, TILE, draw_grid, palette

    def row(key, h, w, classes):
        return key, [Image.new("RGB", (w, h), (200, 50, 50)) for _ in range(3)], classes

    pal = palette(20)
    landscape, portrait = row("wide", 64, 256, [1]), row("tall", 256, 128, [1, 2])
    grid = draw_grid([landscape, portrait, landscape], pal, {}, 255)
    header, gap = 14, 6
    # each block is as tall as its own tiles: no empty band under a landscape image
    assert grid.height == (header + 64 + gap) * 2 + (header + 256 + gap)
    assert grid.width == 3 * (TILE + 4) + LEGEND_W
    pixels = np.asarray(grid)
    assert (pixels[header + 10, 10] == (200, 50, 50)).all()  # first tile where it belongs
    assert (pixels[header + 64 + gap + header + 10, 10] == (200, 50, 50)).all()  # the portrait right below

    many = draw_grid([landscape] * (2 * ROWS_PER_COLUMN + 4), pal, {}, 255)
    assert many.width == 3 * (3 * (TILE + 4) + LEGEND_W)  # three columns of blocks side by side
    assert many.height == ROWS_PER_COLUMN * (header + 64 + gap)
    # a legend longer than its image sets the block's height, so labels never overlap the next block
    legend_heavy = draw_grid([row("k", 20, 256, list(range(12)))], pal, {}, 255)
    assert legend_heavy.height == header + 12 * 13 + gap
