"""The mining job's per-shard output: a shard appears once complete, no row twice, every reject quarantined."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _mined_rows(shard: str, ids: list[str]) -> pa.Table:
    from maple.stages.shards import OUTPUT_SCHEMA

    rows = [{"id": i, "direction": "t2i", "query_id": i.split(":")[0], "positive_id": "p", "positive_score": 0.9,
             "candidate_ids": ["c"], "candidate_scores": [0.1], "candidate_sims": [0.5], "hard_negative_ids": ["c"],
             "hard_negative_scores": [0.1], "num_false_negatives": 0, "repeated": True, "fallback": False,
             "judge_missing": 0, "candidate_sources": ["retrieved"], "ranking_ids": ["p", "c"],
             "ranking_scores": [0.9, 0.1], "rewrite_texts": [], "rewrite_kinds": [], "shard": shard,
             "_quarantine_reason": None, "_rewrite_rejects": [], "_retrieve_s": 0.0, "_judge_s": 0.0,
             "_judge_pairs": 2, "_mine_s": 0.0} for i in ids]
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def test_writer_refuses_a_row_that_arrives_twice(tmp_path):
    from maple.stages.shards import ShardWriter

    writer = ShardWriter(tmp_path, {"s": 3}, {})
    writer.add(_mined_rows("s", ["a:t2i", "b:t2i"]))
    with pytest.raises(RuntimeError, match="'b:t2i' arrived twice"):
        writer.add(_mined_rows("s", ["b:t2i"]))


def test_writer_publishes_a_shard_only_when_complete(tmp_path):
    from maple.stages.shards import ShardWriter, judged_path

    writer = ShardWriter(tmp_path, {"s": 2, "t": 1}, {})
    writer.add(_mined_rows("s", ["a:t2i"]))
    writer.add(_mined_rows("t", ["x:t2i"]))
    assert judged_path(tmp_path, "t").is_file() and not judged_path(tmp_path, "s").exists()
    with pytest.raises(RuntimeError, match=r"incomplete .*'s': '1/2'"):
        writer.close()
    assert not judged_path(tmp_path, "s").exists()
    assert [p.name for p in (tmp_path / "judged").iterdir()] == ["t.parquet"]  # no temporary file left behind


def test_writer_gives_a_shard_with_no_query_empty_files(tmp_path):
    from maple.stages.shards import ShardWriter, judged_path

    bad = {"id": "p1", "source": "s", "stage": "mine:validate", "reason": "corrupt", "row": "{}"}
    ShardWriter(tmp_path, {"s": 0}, {"s": [bad]}).close()
    assert pq.read_table(judged_path(tmp_path, "s")).num_rows == 0
    assert pq.read_table(tmp_path / "quarantine" / "s.parquet").to_pylist() == [bad]


def test_writer_quarantines_the_rewriters_rejects_with_their_reason(tmp_path):
    from maple.stages.shards import ShardWriter

    rows = _mined_rows("s", ["a:i2t"]).to_pylist()
    rows[0]["_rewrite_rejects"] = [json.dumps({"reason": "not_json", "text": "garbage"})]
    from maple.stages.shards import OUTPUT_SCHEMA

    writer = ShardWriter(tmp_path, {"s": 1}, {})
    writer.add(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
    writer.close()
    quarantined = pq.read_table(tmp_path / "quarantine" / "s.parquet").to_pylist()
    assert [(q["id"], q["stage"], q["reason"]) for q in quarantined] == [("a:i2t", "rewrite", "not_json")]
