"""The readers of one file (`maple.data.parquet_pairs`, `maple.data.webdataset`, `maple.data.coco`) followed by
validation, without Ray, on shards a seeded fuzzer mutated (tests/fixtures/shard_fuzz.py): rows in = rows kept +
rows quarantined, nothing that was not written comes out, and a kept row is the row that was written."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from maple.data.coco import COCO_ITEMS_SCHEMA, coco_rows, read_image_files
from maple.data.config import DataConfig
from maple.data.parquet_pairs import read_parquet_shard
from maple.data.validate import validate_pairs
from maple.data.webdataset import read_webdataset_shard
from tests.fixtures.shard_fuzz import (
    COCO_MUTATIONS,
    PARQUET_MUTATIONS,
    TAR_MUTATIONS,
    check_accounting,
    coco_file,
    parquet_shard,
    webdataset_shard,
)

CFG = DataConfig()
SEEDS = range(int(__import__("os").environ.get("FUZZ_SEEDS", 40)))
LOCAL = pafs.LocalFileSystem()


def _validated(tables: list[pa.Table]) -> tuple[list[dict], list[dict]]:
    kept: list[dict] = []
    quarantined: list[dict] = []
    for table in tables:
        good, bad = validate_pairs(table.to_pydict(), CFG, "fuzz")
        kept += [dict(zip(good, values)) for values in zip(*good.values())]
        quarantined += [dict(zip(bad, values)) for values in zip(*bad.values())]
    return kept, quarantined


@pytest.mark.parametrize("seed", SEEDS)
def test_parquet_rows_in_equal_rows_kept_plus_quarantined(tmp_path, seed):
    rng = random.Random(seed)
    shards = [parquet_shard(tmp_path / f"p{seed}-{k}.parquet", rng, m) for k, m in enumerate(PARQUET_MUTATIONS)]
    tables = [t for s in shards for t in read_parquet_shard(str(s.path), LOCAL)]
    check_accounting(shards, *_validated(tables))


@pytest.mark.parametrize("seed", SEEDS)
def test_webdataset_rows_in_equal_rows_kept_plus_quarantined(tmp_path, seed):
    rng = random.Random(seed)
    shards = [webdataset_shard(tmp_path / f"w{seed}-{k}.tar", rng, m) for k, m in enumerate(TAR_MUTATIONS)]
    tables = [t for s in shards for t in read_webdataset_shard(str(s.path), LOCAL)]
    check_accounting(shards, *_validated(tables))


@pytest.mark.parametrize("seed", SEEDS)
def test_coco_rows_in_equal_rows_kept_plus_quarantined(tmp_path, seed):
    rng = random.Random(seed)
    for k, mutation in enumerate(COCO_MUTATIONS):
        root = tmp_path / f"images-{k}"
        shard = coco_file(tmp_path / f"c{seed}-{k}.json", root, rng, mutation)
        items = pa.Table.from_pylist(coco_rows(shard.path), schema=COCO_ITEMS_SCHEMA)
        check_accounting([shard], *_validated([read_image_files(items, LOCAL, str(root))]))
