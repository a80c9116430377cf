"""The mining job end to end on the synthetic world with the reference judge, on the session's local Ray.

One run (module fixture) serves most properties: its input is the small world's train shards plus a shard with bad
rows, and a judge actor is killed mid-run (a judge step that kills its own process once, given to the pipeline).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle

from jobs.common import mine
from maple.config import load_config
from maple.data.schema import JUDGED_SCHEMA, PAIRS_SCHEMA
from maple.data.synth import Scene, reference_score
from maple.stages.mine_steps import JudgeQueries

BETA = 0.01
REPO = Path(__file__).resolve().parents[2]


def _overrides(tmp: Path, inputs: Path, out: Path) -> list[str]:
    return [f"run.output_dir={tmp}", f"mine.input={inputs}", f"mine.output={out}", "mine.top_k=8",
            "mine.num_hard_negatives=4", "mine.queries_per_batch=32", "run.name=minetest"]


@pytest.fixture(scope="module")
def mine_input(small_world, tmp_path_factory) -> Path:
    world, _ = small_world
    inputs = tmp_path_factory.mktemp("mine_input")
    for shard in sorted((world / "train").glob("*.parquet")):
        shutil.copy(shard, inputs / shard.name)
    val = pq.read_table(sorted((world / "val").glob("*.parquet"))[0]).slice(0, 3).to_pylist()
    val[0]["id"] = "extra-good"
    val[1]["id"], val[1]["image"] = "extra-corrupt", b"\x89PNG\r\n\x1a\n not an image"
    val[2]["id"], val[2]["captions"] = "extra-blank", ["   "]
    pq.write_table(pa.Table.from_pylist(val, schema=PAIRS_SCHEMA), inputs / "part-extra.parquet")
    return inputs


class KilledOnceJudge(JudgeQueries):
    """The judge step, whose actor SIGKILLs its own process on its second batch, once (the marker file records it):
    Ray must restart the actor and retry the task without losing or duplicating a row."""

    marker = ""

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


# The actors cannot import this test module: Ray ships the class by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def mined(mine_input, ray_local, mlflow_uri, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mine")
    marker = tmp / "judge-killed"
    judge = type("KilledOnceJudge", (KilledOnceJudge,), {"marker": str(marker)})
    summary = mine(load_config(None, _overrides(tmp, mine_input, tmp / "mined")), judge_class=judge)
    return {"tmp": tmp, "out": tmp / "mined", "summary": summary, "marker": marker, "inputs": mine_input}


def _input_rows(inputs: Path) -> list[dict]:
    return [r for f in sorted(inputs.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _judged(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / "judged").glob("*.parquet"))])


def _quarantine(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / "quarantine").glob("*.parquet"))])


def _assert_every_query_once(inputs: Path, out: Path) -> None:
    judged_ids = _judged(out)["id"].to_pylist()
    quarantined = _quarantine(out)["id"].to_pylist()
    everything = judged_ids + quarantined
    assert len(everything) == len(set(everything)), "a row was written twice"
    for row in _input_rows(inputs):
        if row["id"] in quarantined:  # the whole pair was refused before any query was made of it
            continue
        expected = {f"{row['id']}#{j}:t2i" for j in range(len(row["captions"]))} | {f"{row['id']}:i2t"}
        assert expected <= set(everything), f"queries of pair {row['id']} are missing"


def test_every_train_query_appears_once_per_direction_in_judged_or_quarantine(mined):
    _assert_every_query_once(mined["inputs"], mined["out"])
    n_captions = sum(len(r["captions"]) for r in _input_rows(mined["inputs"]) if not r["id"].startswith("extra-"))
    counts = mined["summary"]["counts"]
    assert counts["judged_rows_t2i"] == n_captions + 1 and counts["judged_rows_i2t"] == 256 + 1


def test_a_judge_actor_killed_mid_run_loses_no_row_and_duplicates_none(mined):
    assert mined["marker"].is_file(), "the fault-injection hook did not kill the judge actor"
    _assert_every_query_once(mined["inputs"], mined["out"])


def test_bad_rows_are_quarantined_beside_the_output_with_their_reason(mined):
    q = pq.read_table(mined["out"] / "quarantine" / "part-extra.parquet").to_pylist()
    reasons = {r["id"]: r["reason"] for r in q}
    assert set(reasons) == {"extra-corrupt", "extra-blank"}
    assert reasons["extra-blank"] == "empty_caption" and reasons["extra-corrupt"] not in ("", None)
    assert mined["summary"]["counts"]["quarantined_rows"] == 2


def test_output_is_one_judged_file_per_input_shard_in_the_judged_schema(mined):
    names = sorted(p.name for p in (mined["out"] / "judged").iterdir())
    assert names == sorted(p.name for p in mined["inputs"].glob("*.parquet"))
    for name in names:
        assert pq.read_schema(mined["out"] / "judged" / name).equals(JUDGED_SCHEMA)


def test_scores_are_the_reference_judges_for_positive_and_candidates(mined):
    rows = {r["id"]: r for r in _input_rows(mined["inputs"])}
    judged = _judged(mined["out"]).to_pylist()
    t2i = [r for r in judged if r["direction"] == "t2i"][:40]
    for r in t2i:
        caption = r["query_text"]
        assert r["positive_score"] == pytest.approx(reference_score(caption, Scene.from_json(
            rows[r["positive_id"]]["annotation"])), abs=1e-6)
        for cid, score in zip(r["candidate_ids"], r["candidate_scores"]):
            assert score == pytest.approx(reference_score(caption, Scene.from_json(rows[cid]["annotation"])), abs=1e-6)
    i2t = [r for r in judged if r["direction"] == "i2t"][:40]
    for r in i2t:
        scene = Scene.from_json(rows[r["query_id"]]["annotation"])
        for cid, score in zip(r["candidate_ids"], r["candidate_scores"]):
            pid, j = cid.rsplit("#", 1)
            assert score == pytest.approx(reference_score(rows[pid]["captions"][int(j)], scene), abs=1e-6)


def test_hard_negatives_are_scored_candidates_below_the_positive_with_their_content(mined):
    rows = {r["id"]: r for r in _input_rows(mined["inputs"])}
    for r in _judged(mined["out"]).to_pylist():
        assert len(r["hard_negative_ids"]) == 4
        assert set(r["hard_negative_ids"]) <= set(r["candidate_ids"])
        if r["fallback"]:
            assert all(s is None for s in r["hard_negative_scores"])
            continue
        assert all(s <= r["positive_score"] - BETA + 1e-6 for s in r["hard_negative_scores"])
        if r["direction"] == "t2i":
            assert r["positive_id"] not in r["hard_negative_ids"]
            assert r["hard_negative_images"] == [rows[c]["image"] for c in r["hard_negative_ids"]]
        else:
            assert not any(c.startswith(r["query_id"] + "#") for c in r["hard_negative_ids"])
            assert r["hard_negative_texts"] == [rows[c.rsplit("#", 1)[0]]["captions"][int(c.rsplit("#", 1)[1])]
                                                for c in r["hard_negative_ids"]]


def test_summary_and_the_mlflow_run_record_counts_rates_and_the_score_histogram(mined, mlflow_uri):
    import mlflow

    summary = json.loads((mined["out"] / "summary.json").read_text())
    assert summary["counts"]["judged_rows"] == _judged(mined["out"]).num_rows
    assert summary["throughput"]["judge_pairs_per_s"] > 0
    assert sum(summary["score_histogram"]) == summary["judge_pairs_this_run"]
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["maple"], filter_string="tags.`maple.job` = 'mine'")
    run = runs.iloc[0]
    assert run["metrics.judged_rows"] == summary["counts"]["judged_rows"]
    assert run["metrics.judge_pairs_per_s"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"summary.json", "score_histogram.png"} <= artifacts


def test_a_rerun_skips_finished_shards_and_redoes_only_the_missing_one(mined):
    out = mined["out"]
    redo = out / "judged" / "part-00001.parquet"
    before = pq.read_table(redo)
    redo.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "judged").iterdir()}
    summary = mine(load_config(None, _overrides(mined["tmp"], mined["inputs"], out)))
    assert summary["shards_this_run"] == ["part-00001"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "judged").iterdir() if p.name in kept} == kept
    after = pq.read_table(redo).sort_by("id")
    before = before.sort_by("id")
    assert after["id"].equals(before["id"]) and after["positive_score"].equals(before["positive_score"])


# --- the cluster path: `ray start --head` on loopback + `ray job submit` ---------------------------------------------


def test_mine_runs_as_a_ray_job_submitted_to_a_head_on_loopback(ray_head, small_world, mlflow_uri, tmp_path):
    world, _ = small_world
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted((world / "train").glob("*.parquet"))[0], inputs / "part-00000.parquet")
    out = tmp_path / "mined"
    entrypoint = ["python", "-m", "jobs.mine", *_overrides(tmp_path, inputs, out),
                  f"run.mlflow_tracking_uri={mlflow_uri}", "mine.directions=[t2i]"]
    done = ray_head.submit(entrypoint, "--working-dir", str(REPO))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    n_captions = sum(len(c) for c in pq.read_table(inputs / "part-00000.parquet")["captions"].to_pylist())
    assert summary["counts"]["judged_rows"] == summary["counts"]["judged_rows_t2i"] == n_captions


# --- the per-shard writer ------------------------------------------------------------------------------------------
