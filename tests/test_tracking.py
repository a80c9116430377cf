"""The tracking layer: a config as MLflow params, and the model registry round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maple.config import load_config
from maple.models.config import RerankerConfig
from maple.models.families import build_reranker, load_reranker
from maple.tracking import flat_params, model_dir, register_model

TEXTS = ["a small red circle", "a large blue square left of a small green triangle", "a white diamond"]
IMAGES = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(3)]


def test_flat_params_hold_every_resolved_key():
    flat = flat_params(load_config(None, ["train.lr=0.5"]))
    assert flat["train.lr"] == "0.5" and "train.loss.rpa" in flat and flat["world.shapes"].startswith('["')


def test_a_registered_reranker_loads_back_from_its_models_uri(tmp_path, mlflow_uri):
    import mlflow

    model = build_reranker(RerankerConfig(kind="cross_encoder"), seed=4).eval()
    model.save_pretrained(tmp_path / "r")
    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.create_experiment("reranker-registry-test", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        uri = register_model(tmp_path / "r", "test-reranker", "reranker")
    assert uri.startswith("models:/test-reranker/")
    loaded = load_reranker(model_dir(uri))
    assert loaded.score(TEXTS[0], IMAGES) == pytest.approx(model.score(TEXTS[0], IMAGES), abs=1e-6)
