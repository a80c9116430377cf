"""Autoscaling from the project's own launcher YAML, on one machine: the mine job scales the judge's group from zero
nodes and, once idle, back to zero.

The autoscaler is Ray's own (v1, `ray start --head --autoscaling-config`) over Ray's fake multi-node provider, the
mechanism of `ray.cluster_utils.AutoscalingCluster`. That class cannot be used as it is in Ray 2.60: its config
template (`fake_multi_node/example.yaml`) is not in the wheel, and its start and shutdown run `ray stop --force`,
which stops every Ray on the machine. So the head is started here as `tests/conftest.py: ray_head` starts one: on
127.0.0.1, free ports, a private temp dir, stopped by its process group (the fake nodes are its children).

The node types are cluster/aws.yaml's: the resources each group declares (unscaled: they are logical), its
min_workers / max_workers, the cluster's max_workers and upscaling speed; the idle timeout is the YAML's divided by
TIME_SCALE (10 min → 10 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

from tests.conftest import _free_ports, _stop_group, _stop_head
from tests.fixtures.cluster import launcher_config

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
TIME_SCALE = 60  # the YAML's minutes become seconds
HEAD_OBJECT_STORE = 200 * 1024 * 1024
NODE_OBJECT_STORE = 150 * 1024 * 1024
DATA_CAP = ["run.data_max_cpus=16", "run.data_max_gpus=8"]


def fake_autoscaler_config(cfg: dict, gcs_address: str) -> dict:
    """cluster/aws.yaml's node types on Ray's fake multi-node provider (the shape of AutoscalingCluster's config)."""
    head = cfg["head_node_type"]
    types = {name: {"resources": {**t["resources"], "object_store_memory": NODE_OBJECT_STORE}, "node_config": {},
                    "min_workers": t.get("min_workers", 0), "max_workers": t["max_workers"]}
             for name, t in cfg["available_node_types"].items() if name != head}
    types[FAKE_HEAD_NODE_TYPE] = {"resources": {}, "node_config": {}, "max_workers": 0}
    return {"cluster_name": f"{cfg['cluster_name']}-sim", "max_workers": cfg["max_workers"],
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": FAKE_HEAD_NODE_TYPE, "auth": {},
            "upscaling_speed": cfg["upscaling_speed"], "idle_timeout_minutes": cfg["idle_timeout_minutes"] / TIME_SCALE,
            "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


def group_of(resources: dict, cfg: dict) -> str:
    """The YAML group whose declared CPUs, GPUs and custom resources a running node has."""
    for name, node_type in cfg["available_node_types"].items():
        declared = {k: float(v) for k, v in node_type["resources"].items() if v}
        if {k: v for k, v in resources.items() if k in declared or k in ("CPU", "GPU") and v} == declared:
            return name
    raise AssertionError(f"a node of no group of the YAML: {resources}")


@pytest.fixture
def autoscaling_head(tmp_path):
    """A head with cluster/aws.yaml's head resources (CPU 0) and the autoscaler over its worker groups."""
    cfg = launcher_config()
    temp_dir = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    os.makedirs(os.path.join(temp_dir, "ray"))
    port, client, agent, agent_grpc, runtime_env, metrics = _free_ports(6)
    gcs = f"127.0.0.1:{port}"
    config_path = tmp_path / "autoscaler.json"
    config_path.write_text(json.dumps(fake_autoscaler_config(cfg, gcs)))
    bin_dir = Path(sys.executable).parent
    # RAY_TMPDIR keeps Ray's address file private; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every process (the
    # fake nodes, the job's driver) on 127.0.0.1 instead of the machine's own address.
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_TMPDIR": temp_dir,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    head_cpus = cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("CPU", 0)
    start = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={head_cpus}", f"--object-store-memory={HEAD_OBJECT_STORE}",
         f"--temp-dir={os.path.join(temp_dir, 'ray')}", "--include-dashboard=false",
         f"--autoscaling-config={config_path}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = start.communicate(timeout=180)
        assert start.returncode == 0, output[-3000:]
        yield {"address": gcs, "env": env, "config": cfg}
    finally:
        for log in Path(temp_dir, "ray", "session_latest", "logs").glob("monitor.*"):  # the autoscaler's decisions
            shutil.copy(log, tmp_path / log.name)
        # the fake worker nodes are children of the head's autoscaler: the same process group
        _stop_head(start.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def alive_groups(gcs, cfg: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in gcs.get_all_node_info(timeout=10).values():
        if info.state == 0:  # ALIVE
            group = group_of(dict(info.resources_total), cfg)
            counts[group] = counts.get(group, 0) + 1
    return counts


# A Ray Data job that keeps every CPU it gets busy (1-CPU tasks of 0.5 s), its driver set up as every maple job's
# is (`maple.runtime.init_ray`), with or without `run.data_max_cpus`.
BUSY_DATA_JOB = """
import sys, time
import ray
from maple.runtime import init_ray
from maple.section import RunConfig

cap = float(sys.argv[1]) if len(sys.argv) > 1 else None
init_ray(RunConfig(data_max_cpus=cap), quiet=True)

def busy(batch):
    time.sleep(0.5)
    return batch

rows = ray.data.range(240, override_num_blocks=240).map_batches(busy, num_cpus=1, batch_size=None).count()
print("rows", rows)
"""


def run_and_watch(cmd: list[str], env: dict, gcs, cfg: dict, log_path: Path, timeout_s: float
                  ) -> tuple[list[tuple[float, dict[str, int]]], float, int]:
    """Run `cmd` against the cluster; the alive nodes per group each time they change, until the job has ended and
    the cluster is back to its head. Returns (trajectory, seconds until the job ended, its exit code)."""
    head = cfg["head_node_type"]
    trajectory: list[tuple[float, dict[str, int]]] = []
    ended = None
    with open(log_path, "w") as log:
        started = time.monotonic()
        job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.monotonic() < started + timeout_s:
            counts = alive_groups(gcs, cfg)
            now = time.monotonic() - started
            if not trajectory or trajectory[-1][1] != counts:
                trajectory.append((now, counts))
            if ended is None and job.poll() is not None:
                ended = now
            if ended is not None and counts == {head: 1}:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"not back to the head alone in {timeout_s:.0f} s: {trajectory}")
    finally:
        if job.poll() is None:
            _stop_group(job.pid, signal.SIGKILL, timeout_s=30)
        print(f"\ntrajectory (s since submit → alive nodes per group): {trajectory}; job ended at {ended}")
    return trajectory, ended, job.returncode


def test_the_mine_job_scales_the_judge_group_from_zero_and_back(autoscaling_head, small_world, mlflow_uri, tmp_path):
    from ray._raylet import GcsClient

    cfg = autoscaling_head["config"]
    head, idle_s = cfg["head_node_type"], cfg["idle_timeout_minutes"] * 60 / TIME_SCALE
    gcs = GcsClient(address=autoscaling_head["address"])
    assert alive_groups(gcs, cfg) == {head: 1}, "worker groups start at zero nodes"
    world, _ = small_world
    # One judge actor over a whole 8-GPU node (a judge with tensor_parallel_size 8): only the judge/training
    # groups fit it. (One actor asking for a single GPU would start a serving node: the autoscaler picks the group
    # the request fills best.)
    # The world's 4 shards (256 pairs, 672 queries), with Ray Data capped as configs/cluster.yaml caps it
    # (run.data_max_cpus: here one cpu_worker's 16 CPUs; run.data_max_gpus: the judge's 8).
    overrides = [f"run.output_dir={tmp_path}", f"mine.input={world / 'train'}", f"mine.output={tmp_path / 'out'}",
                 "mine.top_k=8", "mine.num_hard_negatives=4", "mine.queries_per_batch=64", "judge.gpus_per_actor=8",
                 "judge.tensor_parallel_size=8", "run.name=autoscale", *DATA_CAP]
    env = {**autoscaling_head["env"], "RAY_ADDRESS": autoscaling_head["address"], "MLFLOW_TRACKING_URI": mlflow_uri}
    trajectory, ended, rc = run_and_watch([sys.executable, "-m", "jobs.mine", *overrides], env, gcs, cfg,
                                          tmp_path / "job.log", timeout_s=420)
    assert rc == 0, (tmp_path / "job.log").read_text()[-3000:]

    # The judge's groups: 0 → one node while the job runs → 0 once idle. Within Ray Data's cap the CPU work stays
    # on the CPU group (one node's worth, two while the autoscaler places the first requests) and the judge's node;
    # no serving node, no second 8-GPU node.
    judge_groups = {"gpu_a100x8", "gpu_h100x8"}
    judge_nodes = [sum(c.get(g, 0) for g in judge_groups) for _, c in trajectory]
    assert judge_nodes[0] == 0 and max(judge_nodes) == 1 and judge_nodes[-1] == 0, trajectory
    assert all(set(c) <= {head, "cpu_worker", *judge_groups} for _, c in trajectory), trajectory
    assert max(c.get("cpu_worker", 0) for _, c in trajectory) <= 2, trajectory
    for group, node_type in cfg["available_node_types"].items():
        assert max(c.get(group, 0) for _, c in trajectory) <= node_type.get("max_workers", 1), (group, trajectory)
    up = next(t for (t, c), n in zip(trajectory, judge_nodes) if n)
    down = next(t for (t, c), n in zip(trajectory, judge_nodes) if t > up and n == 0)
    assert ended is not None and down >= ended, "the judge's node went away before the job ended"
    assert down - ended <= idle_s + 60, f"the idle judge node lived {down - ended:.0f} s after the job"
    print(f"job ended at {ended:.1f} s; judge node up at {up:.1f} s, gone {down - ended:.1f} s after the job "
          f"(idle timeout {idle_s:.0f} s)")


def test_ray_data_s_requests_stay_within_run_data_max_cpus(autoscaling_head, tmp_path):
    """Ray Data's own autoscaler asks for twice the CPUs while a busy cluster stays busy; maple's cap
    (run.data_max_cpus, Ray Data's resource limits) keeps that request, and so the nodes started, to the cap."""
    from ray._raylet import GcsClient

    cfg = autoscaling_head["config"]
    gcs = GcsClient(address=autoscaling_head["address"])
    env = {**autoscaling_head["env"], "RAY_ADDRESS": autoscaling_head["address"]}
    cap = cfg["available_node_types"]["cpu_worker"]["resources"]["CPU"]  # one CPU node's worth
    trajectory, _, rc = run_and_watch([sys.executable, "-c", BUSY_DATA_JOB, str(cap)], env, gcs, cfg,
                                      tmp_path / "job.log", timeout_s=300)
    assert rc == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert all(set(c) <= {cfg["head_node_type"], "cpu_worker"} for _, c in trajectory), trajectory
    assert max(c.get("cpu_worker", 0) for _, c in trajectory) == 1, trajectory
