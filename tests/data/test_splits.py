"""A run's splits (`maple.data.splits`): a pair's split depends on its id alone, in the configured shares, and the
writer puts every pair in exactly one shard of its split, quarantines repeated ids, and replaces only its own
outputs."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maple.data.files import OUTPUT_MARKER
from maple.data.schema import PAIRS_SCHEMA
from maple.data.splits import SplitWriter, is_val, split_of, split_rows


def _pairs(ids: list[str], source: str = "s.csv") -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "image": b"png", "image_format": "png", "captions": [f"caption {i}"],
                                  "source": source, "annotation": None} for i in ids], schema=PAIRS_SCHEMA)


def test_split_of_matches_the_hash_read_as_a_fraction():
    for i in range(200):
        pair_id = f"photo-{i}.jpg"
        u = int(hashlib.blake2b(pair_id.encode(), digest_size=8).hexdigest(), 16)  # big-endian: another reading
        u = int.from_bytes(u.to_bytes(8, "big")[::-1], "big") / 2**64
        expected = "test" if u < 0.1 else "val" if u < 0.3 else "train"
        assert split_of(pair_id, val_fraction=0.2, test_fraction=0.1) == expected


def test_split_shares_are_the_fractions_within_sampling_error():
    n = 20_000
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(n):
        counts[split_of(str(i), 0.05, 0.1)] += 1
    assert abs(counts["test"] / n - 0.1) < 0.01 and abs(counts["val"] / n - 0.05) < 0.01


def test_the_writer_puts_each_pair_in_one_shard_of_its_split_and_rolls_shards(tmp_path):
    writer = SplitWriter(tmp_path, ("train", "val", "test"), shard_rows=3, quarantine_name="import")
    ids = [f"p{i}" for i in range(8)]
    writer.add(_pairs(ids[:5]), ["train", "train", "val", "train", "train"])
    writer.add(_pairs(ids[5:]), "train")
    counts = writer.close()
    assert counts["splits"] == {"train": 7, "val": 1, "test": 0} and counts["quarantined"] == 0
    assert sorted(p.name for p in (tmp_path / "train").glob("*.parquet")) == ["part-00000.parquet",
                                                                            "part-00001.parquet",
                                                                            "part-00002.parquet"]
    assert [pq.read_table(tmp_path / "train" / f"part-0000{k}.parquet").num_rows for k in range(3)] == [3, 3, 1]
    assert pq.read_table(tmp_path / "train")["id"].to_pylist() == ["p0", "p1", "p3", "p4", "p5", "p6", "p7"]
    empty = pq.read_table(tmp_path / "test")
    assert empty.num_rows == 0 and empty.schema.equals(PAIRS_SCHEMA)  # an empty split still has the schema


def test_an_id_seen_earlier_in_the_import_is_quarantined_once_and_the_first_kept(tmp_path):
    writer = SplitWriter(tmp_path, ("train",), shard_rows=10, quarantine_name="import")
    writer.add(_pairs(["a", "b"], "one.parquet"), "train")
    writer.add(_pairs(["b", "c", "c"], "two.parquet"), "train")
    counts = writer.close()
    assert pq.read_table(tmp_path / "train")["id"].to_pylist() == ["a", "b", "c"]
    quarantine = pq.read_table(tmp_path / "quarantine" / "import.parquet").to_pylist()
    assert [(q["id"], q["source"], q["reason"]) for q in quarantine] == [("b", "two.parquet", "duplicate_id"),
                                                                         ("c", "two.parquet", "duplicate_id")]
    assert counts["reasons"] == {"duplicate_id": 2}


def test_a_second_import_replaces_its_split_and_leaves_the_others(tmp_path):
    first = SplitWriter(tmp_path, ("train", "test"), shard_rows=10, quarantine_name="import")
    first.add(_pairs(["a", "b"]), ["train", "test"])
    first.close()
    second = SplitWriter(tmp_path, ("test",), shard_rows=10, quarantine_name="import-test")
    second.add(_pairs(["held-1"]), "test")
    second.close()
    assert pq.read_table(tmp_path / "train")["id"].to_pylist() == ["a"]
    assert pq.read_table(tmp_path / "test")["id"].to_pylist() == ["held-1"]
    assert (tmp_path / "test" / OUTPUT_MARKER).is_file()


def test_a_folder_maple_did_not_write_is_refused_before_any_work(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        SplitWriter(tmp_path, ("train",), shard_rows=10, quarantine_name="import")
    assert (tmp_path / "train" / "notes.txt").read_text() == "mine"


def test_split_rows_keeps_every_row_once_and_the_schema_of_an_all_null_column():
    """The reranker's validation share of the mined rows."""
    ids = [f"img-{i}:i2t" for i in range(40)]
    # image-to-text rows: the positive is a caption, so positive_image is null in every row
    table = pa.table({"id": ids, "positive_image": pa.nulls(40, pa.binary()), "positive_text": ["a cap"] * 40})
    train, val = (split_rows(table, 0.25, val) for val in (False, True))
    assert train.schema == val.schema == table.schema
    assert sorted(train["id"].to_pylist() + val["id"].to_pylist()) == sorted(ids)
    assert val["id"].to_pylist() == [i for i in ids if is_val(i, 0.25)]
