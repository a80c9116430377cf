"""rows in = rows kept + rows quarantined through the Ray readers and validation (`maple.stages.read`), on folders
of shards a seeded fuzzer mutated (tests/fixtures/shard_fuzz.py), at 1, 2 and 4 CPUs: a bad shard is quarantined
and the others are read, whatever the CPU count.

The CPU count is Ray Data's resource limit on the session's 4-CPU Ray (`DataContext.execution_options`), which sets
how many read and validation tasks run at once and so how blocks are bundled into batches. A fresh local Ray per
count would also change Ray's own read parallelism, but maple's readers no longer use it (one task per file), and
on two busy cores each fresh Ray costs 11-30 s to start (measured)."""

from __future__ import annotations

import random

import pytest
import ray.data

from maple.data.config import DataConfig
from maple.stages.read import read_pairs, validated
from tests.fixtures.shard_fuzz import (
    COCO_MUTATIONS,
    PARQUET_MUTATIONS,
    TAR_MUTATIONS,
    check_accounting,
    coco_file,
    parquet_shard,
    webdataset_shard,
)

CPUS = [1, 2, 4]


@pytest.fixture(params=CPUS, ids=[f"{n}cpu" for n in CPUS])
def cpus(request, ray_local):
    options = ray.data.DataContext.get_current().execution_options
    previous = options.resource_limits
    options.resource_limits = previous.copy(cpu=request.param)
    yield request.param
    options.resource_limits = previous


def _read(cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    good, bad = validated(read_pairs(cfg), cfg, "fuzz", materialize=True)
    return good.take_all(), bad.take_all()


def test_every_format_accounts_for_every_row_at_this_cpu_count(tmp_path, cpus):
    rng = random.Random(cpus)
    parquet = [parquet_shard(tmp_path / "pq" / f"s{k}.parquet", rng, m) for k, m in enumerate(PARQUET_MUTATIONS)]
    check_accounting(parquet, *_read(DataConfig(format="parquet", path=str(tmp_path / "pq"))))

    tars = [webdataset_shard(tmp_path / "wds" / f"s{k}.tar", rng, m) for k, m in enumerate(TAR_MUTATIONS)]
    check_accounting(tars, *_read(DataConfig(format="webdataset", path=str(tmp_path / "wds"))))

    for k, mutation in enumerate(COCO_MUTATIONS):
        coco = coco_file(tmp_path / f"c{k}.json", tmp_path / f"images-{k}", rng, mutation)
        cfg = DataConfig(format="coco", path=str(coco.path), image_root=str(tmp_path / f"images-{k}"))
        check_accounting([coco], *_read(cfg))

