"""Fixtures of the PAL tests: one feature cache over the small world (computed once by the Ray Data stage) and an
aligner trained from it for a few steps."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maple.data.schema import PAIRS_SCHEMA

NUM_ANCHORS = 8


@pytest.fixture(scope="session")
def pal_splits(small_world, tmp_path_factory):
    """train: the small world's first train shard (64 pairs); val: its val shard plus a shard with a broken image."""
    world_dir, _ = small_world
    root = tmp_path_factory.mktemp("pal_splits")
    for split in ("train", "val"):
        (root / split).mkdir()
        shutil.copy(sorted((world_dir / split).glob("*.parquet"))[0], root / split / "part-00000.parquet")
    rows = pq.read_table(root / "val" / "part-00000.parquet").slice(0, 2).to_pylist()
    rows[1].update(id="broken-1", image=b"\x89PNG not really")
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), root / "val" / "part-00001.parquet")
    return root


@pytest.fixture(scope="session")
def pal_cache(ray_local, pal_splits, tmp_path_factory):
    """(cache_dir, encoders_dir, {split: cache report}) with train and val cached."""
    from maple.models.config import ModelConfig
    from maple.models.feature_cache import cache_features, ensure_encoders

    cache = tmp_path_factory.mktemp("pal_cache")
    encoders = ensure_encoders(ModelConfig(family="pal", pal={"num_anchors": NUM_ANCHORS}), cache, seed=0)
    reports = {s: cache_features(pal_splits / s, cache, s, encoders, batch_size=32) for s in ("train", "val")}
    return cache, encoders, reports


@pytest.fixture(scope="session")
def trained_aligner(pal_cache, tmp_path_factory):
    """An aligner exported after 20 in-process steps on the cached train split."""
    from maple.models.feature_cache import read_features
    from maple.models.pal_task import build_head, export_aligner, train_head

    cache, _, _ = pal_cache
    table = read_features(cache, "train")
    head = build_head("pal", table, NUM_ANCHORS, 0.03, seed=0)
    train_head(head, table, steps=20, batch_size=32, lr=1e-2, tau=0.07, seed=0)
    return export_aligner(head, cache, tmp_path_factory.mktemp("pal_model") / "pal")
