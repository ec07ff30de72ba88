import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# The tests' models are tiny: one thread each is as fast as two on an idle machine, and several
# times faster on a busy one, where OpenMP threads wait for each other's cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests choose their Ray cluster explicitly; an address exported in the developer's shell must not
# send them to another cluster.
os.environ.pop("RAY_ADDRESS", None)
# Ray's token authentication stays on; clients that join a cluster must say so to send the token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# `ray start --head` refuses to start without a token, and a fresh machine has none until something
# has called `ray.init()`: without this the cluster tests would pass or fail by test order. The
# token lives in this run's own file, never in the user's ~/.ray.
if not (
    os.environ.get("RAY_AUTH_TOKEN")
    or os.environ.get("RAY_AUTH_TOKEN_PATH")
    or (Path.home() / ".ray" / "auth_token").is_file()
):
    import secrets
    import tempfile

    _token_file = Path(tempfile.mkdtemp(prefix="c2ftoken")) / "auth_token"
    _token_file.write_text(secrets.token_hex(32))
    _token_file.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_token_file)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _synthetic_master(tmp_path_factory):
    from shards.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("syn-master")
    write_synthetic_dataset(out, num_samples=12, samples_per_shard=4, seed=0)
    return out


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic scenes for training tests (read only): 8 in 2 shards, and 48 in 6 shards."""
    from shards.synthetic import write_synthetic_dataset

    small = tmp_path_factory.mktemp("scenes8")
    write_synthetic_dataset(small, 8, 4, seed=0)
    big = tmp_path_factory.mktemp("scenes48")
    write_synthetic_dataset(big, 48, 8, seed=1)
    return small, big


@pytest.fixture
def synthetic_ds(_synthetic_master, tmp_path) -> Path:
    """A fresh copy of a valid 3-shard synthetic dataset that a test may damage."""
    out = tmp_path / "ds"
    shutil.copytree(_synthetic_master, out)
    return out


@pytest.fixture
def sample_tree() -> Path:
    return REPO / "samples" / "train"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Cluster:
    address: str  # GCS address, for `--address`
    dashboard: str | None  # job server URL, for `ray job submit --address`
    temp: str  # the cluster's own temp dir
    metrics: str = ""  # the head node's Prometheus endpoint (Ray's --metrics-export-port)

    def owns(self, proc) -> bool:
        """Whether a process belongs to this cluster (it or an ancestor names the temp dir)."""
        import psutil

        try:
            chain = [proc, *proc.parents()]
            return any(self.temp in " ".join(p.cmdline()) for p in chain)
        except psutil.Error:
            return False


@contextlib.contextmanager
def ray_cluster(num_cpus: int, num_gpus: int = 0, dashboard: bool = False, env: dict | None = None):
    """A Ray cluster of this test's own (`ray start --head` on loopback, its own temp dir). Teardown
    kills this cluster's processes only: `ray stop` would stop every cluster on the machine."""
    import subprocess
    import sys
    import tempfile

    import psutil

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})}
    temp = tempfile.mkdtemp(prefix="c2fray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dash, metrics = free_port(), free_port(), free_port()
    cmd = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--temp-dir={temp}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        f"--ray-client-server-port={free_port()}",
        # Every port of its own: a default port still held by another cluster (a developer's, or
        # one a previous test is tearing down) leaves the job agent without its HTTP server, and
        # `ray job submit` then answers "No available agent" for as long as it runs.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={free_port()}",
        "--disable-usage-stats",
    ]
    cmd += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"] if dashboard else ["--include-dashboard=false"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
    try:
        yield Cluster(
            f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}" if dashboard else None, temp, f"http://127.0.0.1:{metrics}"
        )
    finally:
        victims: set[psutil.Process] = set()
        for p in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if temp in cmdline or f"127.0.0.1:{gcs}" in cmdline:
                victims.add(p)
                with contextlib.suppress(psutil.Error):
                    victims.update(p.children(recursive=True))
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(victims), timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
