"""Shared fixtures: one local Ray for the whole session, a small synthetic world, a private MLflow store."""

from __future__ import annotations

import os

import pytest

# Ray Train V2 polls workers every 2 s by default, which dominates short test runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")  # as jobs.common.init_ray does


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for every test that needs it; logical CPUs above the 2 cores so that an actor pool
    and a task can coexist."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small synthetic world (train/val/test/compositional Parquet shards) shared by the end-to-end tests."""
    from maple.data.config import WorldConfig
    from maple.data.synth import synthesize

    cfg = WorldConfig(n_train=256, n_val=32, n_test=48, n_compositional=60, shard_size=64)
    out = tmp_path_factory.mktemp("world")
    synthesize(cfg, out)
    return out, cfg
