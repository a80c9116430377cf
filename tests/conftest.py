"""Shared fixtures: one local Ray for the whole session, a small synthetic world, a private MLflow store, and a
`ray start --head` of the suite's own for `ray job submit`. Fixtures of several test folders live in tests/fixtures/
(registered below); a folder's own ones in its conftest."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["tests.full_log", "tests.fixtures.cluster", "tests.fixtures.judge", "tests.fixtures.mate",
                  "tests.fixtures.pal", "tests.fixtures.rerank", "tests.fixtures.serve", "tests.fixtures.train"]

# Ray Train V2 polls workers every 2 s by default, which dominates short test runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")  # as jobs.common.init_ray does


RAY_FIXTURES = {"ray_local", "ray_head"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs a Ray (directly or through another fixture) is marked `e2e`, as the modules that start
    a vLLM engine, a job, a server or a script as a process mark themselves: `make test-fast` leaves them out. The
    tests that submit to `ray_head` run last, together (a stable sort: each keeps its place among them): the
    session's one head starts once, and its idle daemons (5.2 s of CPU a minute, measured) never run beside the rest
    of the suite."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: "ray_head" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for every test that needs it; logical CPUs above the 2 cores so that an actor pool
    and a task can coexist."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small synthetic world (train/val/test/compositional Parquet shards) shared by the end-to-end tests."""
    from maple.data.config import WorldConfig
    from maple.data.synth import synthesize

    cfg = WorldConfig(n_train=256, n_val=32, n_test=48, n_compositional=60, shard_size=64)
    out = tmp_path_factory.mktemp("world")
    synthesize(cfg, out)
    return out, cfg


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen, so no port is handed out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class RayHead:
    """A running head: its job API address and the environment its CLI needs."""

    address: str
    env: dict[str, str]
    ray_bin: str
    temp_dir: str

    def submit(self, entrypoint: list[str], *options: str, timeout_s: float = 1200) -> subprocess.CompletedProcess:
        """`ray job submit` and wait. The head accepts jobs once its dashboard agent has registered, a little after
        the job API answers; until then it says "No available agent", and we try again."""
        deadline = time.monotonic() + 300
        while True:
            done = subprocess.run([self.ray_bin, "job", "submit", f"--address={self.address}", *options, "--",
                                   *entrypoint], env=self.env, capture_output=True, text=True, timeout=timeout_s)
            if "No available agent" not in done.stdout + done.stderr:
                return done
            if time.monotonic() > deadline:  # say why the agent never registered: the end of its own log
                logs = sorted(Path(self.temp_dir).glob("session_latest/logs/dashboard_agent*.log"))
                tail = "".join(path.read_text(errors="replace")[-3000:] for path in logs) or "no agent log"
                done.stderr += f"\n--- dashboard agent log ---\n{tail}"
                return done
            time.sleep(2)


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head of our own on 127.0.0.1 for the tests' `ray job submit`s, started once for the tests that run
    last (pytest_collection_modifyitems) and stopped by its process group (never `ray stop`, which would stop every
    Ray on the machine). Its jobs inherit the environment of `ray start`, which names no MLflow store: each job names
    its own (a `run.mlflow_tracking_uri` override, its runtime env, or the docs page's default). `ray start` runs as
    the leader of a new process group that every process it starts inherits; it returns once the node is up (not
    `--block`: that mode kills the whole node when any helper process, e.g. the Ray client server, times out at
    start on a loaded machine). The job API lives in the dashboard process, so the dashboard is on, bound to
    loopback."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    # Every port a free one: Ray's defaults (10001 client server, 52365 dashboard agent, ...) are fixed numbers
    # that another Ray on the machine may hold, and an agent that cannot bind leaves the head without a job API.
    port, dashboard, client, agent, agent_grpc, runtime_env, metrics = _free_ports(7)
    bin_dir = Path(sys.executable).parent  # the venv's CLIs; CI runs the venv's python without activating it
    # Ray 2.60 turns token authentication on by default; this head listens on loopback only.
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    start = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
         f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    group = start.pid
    address = f"http://127.0.0.1:{dashboard}"
    try:
        output, _ = start.communicate(timeout=300)
        assert start.returncode == 0, output[-3000:]
        _wait_for_job_api(address)
        yield RayHead(address, env, str(bin_dir / "ray"), temp_dir)
    finally:
        _stop_head(group)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_head(group: int) -> None:
    """Stop a `ray start --head` by its process group. SIGTERM lets the workers and agents exit (all within 2 s
    here); the GCS server and the autoscaler's monitor outlast it (still there 15 s later, measured), as does the
    raylet for ~10 s, so what is left after 2 s is killed."""
    _stop_group(group, signal.SIGTERM, timeout_s=2) or _stop_group(group, signal.SIGKILL, timeout_s=30)


def _stop_group(group: int, sig: int, timeout_s: float) -> bool:
    """Signal every process of the group; True once none is left (polled with a deadline)."""
    deadline = time.monotonic() + timeout_s
    try:
        os.killpg(group, sig)
        while time.monotonic() < deadline:
            os.killpg(group, 0)  # raises once the group is empty
            time.sleep(0.5)
    except ProcessLookupError:
        return True
    return False


def _wait_for_job_api(address: str, timeout_s: float = 300.0) -> None:
    """Return once the head's job API answers (readiness polling with a deadline, not a sleep standing in for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:  # refused until the dashboard's HTTP server is up
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray head's job API at {address} did not answer in {timeout_s:.0f} s")
        time.sleep(1)
