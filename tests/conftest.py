import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _synthetic_master(tmp_path_factory):
    from shards.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("syn-master")
    write_synthetic_dataset(out, num_samples=12, samples_per_shard=4, seed=0)
    return out


@pytest.fixture
def synthetic_ds(_synthetic_master, tmp_path) -> Path:
    """A fresh copy of a valid 3-shard synthetic dataset that a test may damage."""
    out = tmp_path / "ds"
    shutil.copytree(_synthetic_master, out)
    return out


@pytest.fixture
def sample_tree() -> Path:
    return REPO / "samples" / "train"
