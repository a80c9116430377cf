"""Fixtures of the serving tests: a registered tiny embedder, a saved tiny reranker, and an index built by
jobs/index.py over the small world's test split plus one corrupt row."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maple.config import load_config
from maple.data.schema import PAIRS_SCHEMA

REGISTERED_NAME = "maple-serve-test"


@pytest.fixture(scope="session")
def embedder_dir(tmp_path_factory):
    from maple.models.config import ModelConfig
    from maple.models.embedder import build_embedder

    path = tmp_path_factory.mktemp("embedder") / "tiny-clip"
    build_embedder(ModelConfig(), seed=7).save_pretrained(path)  # seed 7: not the demo twin
    return path


@pytest.fixture(scope="session")
def registered_embedder(embedder_dir, mlflow_uri, tmp_path_factory) -> str:
    from maple.tracking import mlflow_run, register_embedder

    cfg = load_config(None, [f"run.output_dir={tmp_path_factory.mktemp('register')}"])
    with mlflow_run(cfg, "register", run_name="serve-test-register"):
        return register_embedder(embedder_dir, REGISTERED_NAME)


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory):
    from maple.rerank.config import RerankerConfig
    from maple.rerank.model import build_reranker

    path = tmp_path_factory.mktemp("reranker") / "tiny-cross-encoder"
    build_reranker(RerankerConfig(), seed=3).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def corpus(small_world, tmp_path_factory):
    """The world's test split (48 pairs) and one more shard holding a row whose image is not an image."""
    world_dir, _ = small_world
    out = tmp_path_factory.mktemp("corpus")
    for shard in sorted((world_dir / "test").glob("*.parquet")):
        shutil.copy(shard, out / shard.name)
    bad = {"id": "broken-0", "image": b"\x89PNG but not really", "image_format": "png", "captions": ["a red circle"],
           "source": "broken.parquet", "annotation": None}
    pq.write_table(pa.Table.from_pylist([bad], schema=PAIRS_SCHEMA), out / "zz-broken.parquet")
    return out


@pytest.fixture(scope="session")
def built_index(ray_local, registered_embedder, mlflow_uri, corpus, tmp_path_factory) -> dict:
    """jobs/index.py run as the CLI runs it; returns its manifest."""
    from jobs.index import main

    out = tmp_path_factory.mktemp("index-run")
    return main([f"run.output_dir={out}", f"serve.embedder={registered_embedder}", f"serve.corpus={corpus}",
                 f"serve.index={out / 'index'}", f"run.mlflow_tracking_uri={mlflow_uri}"])
