"""Node loss on the simulated cluster (tests/fixtures/cluster.py): a node dies mid-job and nothing is lost.

Mining: the judge actor pool asks for a GPU of an A100 node (`judge.gpus_per_actor=1`, `judge.accelerator_type=A100`),
so it lands there, as on the real cluster. The judge holds its second batch until the test has killed every process
of the node it runs on (`Cluster.remove_node`, not gracefully: a machine that dies); the job must finish on the
remaining nodes with every query written exactly once.
"""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle

from jobs.common import mine
from maple.config import load_config
from maple.stages.mine_steps import JudgeQueries
from tests.fixtures.cluster import BASE_GROUPS, wait_for_alive_nodes

pytestmark = pytest.mark.cluster

HOLD_S = 120  # the longest the judge holds its batch for the test to remove its node


class JudgeOnDoomedNode(JudgeQueries):
    """The judge step, which logs the node of every batch it starts and, on its second batch, waits (bounded) until
    the test has removed its node; a judge started after that (the restarted actor) never waits."""

    folder = ""

    def __call__(self, batch):
        folder = Path(self.folder)
        node = ray.get_runtime_context().get_node_id()
        with open(folder / "batches", "a") as log:
            log.write(f"{node} {time.time():.3f}\n")
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2 and not (folder / "removed").exists():
            (folder / "holding").write_text(node)
            deadline = time.monotonic() + HOLD_S
            while not (folder / "removed").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return super().__call__(batch)


# The actors cannot import this test module: Ray ships the class by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _input_rows(inputs: Path) -> list[dict]:
    return [r for f in sorted(inputs.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _written_ids(out: Path) -> list[str]:
    return [i for sub in ("judged", "quarantine") for f in sorted((out / sub).glob("*.parquet"))
            for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


def _wait_for(path: Path, job: Future, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if job.done():
            raise AssertionError(f"the job ended before {path.name} appeared: {job.exception()!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear in {timeout_s:.0f} s")
        time.sleep(0.2)


def test_mining_loses_the_judge_node_and_writes_every_query_once(sim_cluster, small_world, mlflow_uri, tmp_path):
    sim_cluster.reset()
    sim_cluster.add("gpu_a100x8")  # a second node of the judge's group, which the job must move to
    wait_for_alive_nodes(2 + len(BASE_GROUPS))
    world, _ = small_world
    inputs = tmp_path / "input"
    inputs.mkdir()
    for shard in sorted((world / "train").glob("*.parquet")):
        shutil.copy(shard, inputs / shard.name)
    folder = tmp_path / "judge"
    folder.mkdir()
    judge = type("JudgeOnDoomedNode", (JudgeOnDoomedNode,), {"folder": str(folder)})
    cfg = load_config(None, [f"run.output_dir={tmp_path}", f"mine.input={inputs}", f"mine.output={tmp_path / 'out'}",
                             "mine.top_k=8", "mine.num_hard_negatives=4", "mine.queries_per_batch=64",
                             "judge.gpus_per_actor=1", "judge.accelerator_type=A100", "run.name=node-loss"])
    pool = ThreadPoolExecutor(max_workers=1)  # the job runs in this process (the driver); the test kills its node
    started = time.monotonic()
    job = pool.submit(mine, cfg, judge_class=judge)
    try:
        _wait_for(folder / "holding", job, timeout_s=240)
        doomed_id = (folder / "holding").read_text()
        doomed = sim_cluster.node_by_id(doomed_id)
        assert sim_cluster.groups[doomed] == "gpu_a100x8", "the judge ran off the A100 group"
        removed_at = time.time()
        sim_cluster.remove(doomed)
        (folder / "removed").touch()  # the restarted judge must not hold a batch
        summary = job.result(timeout=300)  # raises what the job raised; TimeoutError if it hangs
    finally:
        (folder / "removed").touch()  # a judge still holding its batch (the test failed before the loss) goes on
        pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.monotonic() - started

    # the node is gone and the judging went on elsewhere
    assert not next(n for n in ray.nodes() if n["NodeID"] == doomed_id)["Alive"]
    batches = [line.split() for line in (folder / "batches").read_text().splitlines()]
    later = [(node, float(at)) for node, at in batches if float(at) > removed_at]
    assert later and doomed_id not in {node for node, _ in later}, f"batches after the loss ran on {later}"
    resumed_s = min(at for _, at in later) - removed_at

    # rows out = rows in: every query of every input pair exactly once
    written = _written_ids(tmp_path / "out")
    assert len(written) == len(set(written)), "a query was written twice"
    expected = set()
    for row in _input_rows(inputs):
        expected |= {f"{row['id']}#{j}:t2i" for j in range(len(row["captions"]))} | {f"{row['id']}:i2t"}
    assert set(written) == expected
    assert summary["queries_this_run"] == len(expected)
    print(f"\nmining node loss: {len(expected)} queries in, {len(written)} out, no duplicates; the judge's first "
          f"batch on another node {resumed_s:.1f} s after the loss; job {elapsed:.1f} s")
