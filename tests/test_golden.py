"""The shards that `samples/` produces with a deterministic preset, pinned byte for byte.

Refactors must not change a single byte of a shard. These hashes may change only together with
a documented format change (docs/FORMAT.md); update them in the same commit and say why.
"""

import hashlib

from c2f.cli import main

GOLDEN = {
    "c2f-000000.tar": "141eb1a736dad7ea27adc5c901037922ff8c0e8165abc72657789b75094da551",
    "c2f-000001.tar": "3b7ec894d08497c07b79df150583d575f4a161ad05b05002c83cb32d1dd390b6",
    "c2f-000002.tar": "605b31db52b48a26b743dd6afd82486f521146c02532cf34cbbbb9c4f96f047f",
}


def test_samples_shards_are_byte_identical_to_the_pinned_ones(sample_tree, tmp_path):
    out = tmp_path / "golden"
    args = ["label", str(sample_tree), str(out), "--samples-per-shard", "3", "--preset", "fixed-cost"]
    assert main([*args, "--fixed-cost-seconds", "0", "--no-validate"]) == 0
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}
    assert got == GOLDEN
