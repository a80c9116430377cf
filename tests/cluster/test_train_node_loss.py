"""Training on the simulated cluster (tests/fixtures/cluster.py) loses a node, and resumes on one added back.

Two Ray Train workers, pinned to the A100 group (`train.accelerator_type=A100`, as on the real cluster) and one per
node (`train.placement_strategy=STRICT_SPREAD`), train ZeRO-2 over gloo between two nodes. After a checkpoint, rank 1
holds its step until the test has killed every process of its node (`Cluster.remove_node`, not gracefully: a machine
that dies) and started another node of the group, as the autoscaler would. Ray Train must restart both workers from
the checkpoint, one on the surviving node and one on the new node, log to the same MLflow run, and end where the same
run without the loss ends.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
import ray
import ray.cloudpickle
import torch

from jobs.common import train
from maple.config import load_config
from maple.models.families import load_embedder
from maple.recipes.embedder import EmbedderTask
from maple.train.loop import storage_path
from tests.fixtures.cluster import BASE_GROUPS, wait_for_alive_nodes

pytestmark = pytest.mark.cluster

STEPS, HOLD_AT, CHECKPOINT_EVERY = 6, 3, 2
HOLD_S = 120  # the longest rank 1 holds its step for the test to remove its node
MACHINE_METRICS = {"samples_per_s", "step_time_s", "memory_mb"}  # they measure the machine, not the training


class StepLog(EmbedderTask):
    """The embedder task, which logs each worker's (rank, step, node, time) to a file the test reads."""

    folder = ""

    def after_step(self, step: int, rank: int) -> None:
        super().after_step(step, rank)
        with open(Path(self.folder) / "steps", "a") as log:
            log.write(f"{rank} {step} {ray.get_runtime_context().get_node_id()} {time.time():.3f}\n")


class HoldOnDoomedNode(StepLog):
    """Rank 1 waits after step HOLD_AT (bounded) until the test has removed its node; after the restart (the file
    `removed` exists) it never waits."""

    def after_step(self, step: int, rank: int) -> None:
        super().after_step(step, rank)
        folder = Path(self.folder)
        if rank == 1 and step == HOLD_AT and not (folder / "removed").exists():
            (folder / "holding").write_text(ray.get_runtime_context().get_node_id())
            deadline = time.monotonic() + HOLD_S
            while not (folder / "removed").exists() and time.monotonic() < deadline:
                time.sleep(0.1)


# The workers cannot import this test module: Ray ships the classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _task(kind: type, cfg, folder: Path) -> EmbedderTask:
    folder.mkdir()
    task = kind(cfg.model, cfg.train, cfg.eval, seed=cfg.run.seed)
    task.folder = str(folder)
    return task


def _steps(folder: Path) -> list[tuple[int, int, str, float]]:
    return [(int(rank), int(step), node, float(at)) for rank, step, node, at in
            (line.split() for line in (folder / "steps").read_text().splitlines())]


def _wait_for(done: Callable[[], bool], what: str, job: Future, timeout_s: float) -> None:
    """Poll `done` until it holds; fail at once if the run ends first, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if job.done():
            raise AssertionError(f"the run ended before {what}: {job.exception()!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not in {timeout_s:.0f} s: {what}")
        time.sleep(0.2)


def _checkpoint_registered(experiment: Path) -> bool:
    """Ray Train registers a reported checkpoint when its controller next polls the workers (the report returns
    before that), and writes its checkpoint manager's snapshot then. A node lost before that poll loses the
    checkpoint too and the run restarts from the one before (here: from scratch), so the test kills the node only
    once the controller holds the checkpoint."""
    try:
        snapshot = json.loads((experiment / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return False
    return bool(snapshot.get("latest_checkpoint_result"))


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_training_loses_a_node_and_resumes_from_its_checkpoint_on_a_node_added_back(
        sim_cluster, small_world, mlflow_uri, tmp_path):
    import ray.data

    sim_cluster.reset()
    sim_cluster.add("gpu_a100x8")  # two nodes of the training group: one worker on each
    wait_for_alive_nodes(2 + len(BASE_GROUPS))
    world, _ = small_world
    cfg = load_config(None, [
        f"run.output_dir={tmp_path}", "run.name=train-node-loss", f"train.steps={STEPS}", "train.batch_size=16",
        "train.num_workers=2", "train.accelerator_type=A100", "train.placement_strategy=STRICT_SPREAD",
        f"train.checkpoint_every={CHECKPOINT_EVERY}", f"train.eval_every={STEPS}", "train.lr=2e-3",
        "train.warmup_steps=0", "train.max_failures=2"])
    # one 64-row shard: 4 batches of 8 per worker and epoch, so the resumed run crosses into epoch 1
    datasets = {"train": ray.data.read_parquet(str(min((world / "train").glob("*.parquet")))),
                "val": ray.data.read_parquet(str(world / "val"))}

    alone_log = tmp_path / "alone"
    tick = time.monotonic()
    alone = train(cfg, _task(StepLog, cfg, alone_log), datasets, run_name="alone", register_name="")
    alone_s = time.monotonic() - tick
    nodes_alone = {node for _, _, node, _ in _steps(alone_log)}
    a100 = {node.node_id for node in sim_cluster.nodes_of("gpu_a100x8")}
    assert len(nodes_alone) == 2 and nodes_alone <= a100, "the workers did not run one per A100 node"

    folder = tmp_path / "killed"
    task = _task(HoldOnDoomedNode, cfg, folder)
    pool = ThreadPoolExecutor(max_workers=1)  # the run's driver is this process; the test kills a worker's node
    started = time.monotonic()
    job = pool.submit(train, cfg, task, datasets, run_name="node-loss", register_name="")
    try:
        _wait_for((folder / "holding").exists, "rank 1 holds", job, timeout_s=240)
        experiment = Path(storage_path(cfg.train, cfg.run)) / "node-loss"
        _wait_for(lambda: _checkpoint_registered(experiment), "the step-2 checkpoint is registered", job, timeout_s=60)
        doomed_id = (folder / "holding").read_text()
        doomed = sim_cluster.node_by_id(doomed_id)
        assert sim_cluster.groups[doomed] == "gpu_a100x8"
        removed_at = time.time()
        sim_cluster.remove(doomed)
        (folder / "removed").touch()  # the restarted rank 1 must not hold
        added = sim_cluster.add("gpu_a100x8")  # what the autoscaler does for the pending workers (test_autoscaling)
        added_at = time.time()
        result = job.result(timeout=400)  # raises what the run raised; TimeoutError if it hangs
    finally:
        (folder / "removed").touch()  # a rank still holding (the test failed before the loss) goes on
        pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.monotonic() - started

    # the lost steps ran again, on the surviving node and on the node added back
    log = _steps(folder)
    after = [(rank, step, node, at) for rank, step, node, at in log if at > removed_at]
    assert after and doomed_id not in {node for _, _, node, _ in after}
    assert {node for _, _, node, _ in after} == (a100 - {doomed_id}) | {added.node_id}
    assert min(step for _, step, _, _ in after) == CHECKPOINT_EVERY + 1, "the run did not resume from its checkpoint"
    resumed_s = min(at for *_, at in after) - removed_at

    # one MLflow run, finished; the steps after the checkpoint were logged twice (before the loss and after it)
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_run(result.mlflow_run_id).info.experiment_id],
                              filter_string="attributes.run_name = 'node-loss'")
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id] and runs[0].info.status == "FINISHED"
    logged = _history(client, result.mlflow_run_id, "loss")
    steps = [s for s, _ in logged]
    assert steps.count(CHECKPOINT_EVERY) == 1 and steps.count(HOLD_AT) == 2 and max(steps) == STEPS

    # the same metrics and weights as the run without the loss. Tolerance: none. Each rank reads the same rows in
    # the same order (the data position is in the checkpoint), and CPU kernels and gloo reductions between the two
    # nodes are deterministic; the tiny twin has no dropout
    expected = dict(_history(client, alone.mlflow_run_id, "loss"))
    assert [v for _, v in logged] == [expected[s] for s in steps]
    assert {k: v for k, v in result.metrics.items() if k not in MACHINE_METRICS} == \
        {k: v for k, v in alone.metrics.items() if k not in MACHINE_METRICS}
    resumed, reference = load_embedder(result.model_dir).state_dict(), load_embedder(alone.model_dir).state_dict()
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    print(f"\ntraining node loss: resumed from step {CHECKPOINT_EVERY} on the surviving node and a node added "
          f"{added_at - removed_at:.1f} s after the loss; first step {resumed_s:.1f} s after the loss; run "
          f"{elapsed:.1f} s against {alone_s:.1f} s without the loss; losses, metrics and weights bit-equal")
