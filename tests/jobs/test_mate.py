"""jobs/mate.py end to end on the small synthetic world, a local Ray and a private MLflow store; then the trained
model behind `/v1/embeddings` with a text longer than the VLM's window."""

from __future__ import annotations

import os
import socket

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch
from safetensors.torch import load_file

from maple.config import load_config
from maple.models.families import load_embedder


@pytest.fixture(scope="module")
def mate_run(small_world, ray_local, mlflow_uri, tiny_llm_dir, tmp_path_factory):
    """The job with a given VLM (as on a cluster, where it comes by name) and stage 1b skipped: two training runs
    through the Ray Train loop (stage 1a, stage 2), the target stage, the report."""
    from jobs.mate import run_mate
    from maple.models.config import ModelConfig, TinyConfig
    from maple.models.dual_encoder import DualEncoder

    world_dir, _ = small_world
    out = tmp_path_factory.mktemp("mate_job")
    tiny = TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=16, embed_dim=32)
    torch.manual_seed(0)
    DualEncoder.tiny(ModelConfig(tiny=tiny, max_text_tokens=16)).save_pretrained(out / "vlm")
    overrides = [
        f"run.output_dir={out}", "run.name=mate-test", f"eval.split_dir={world_dir}", "eval.batch_size=32",
        "model.family=mate", f"model.mate.llm={tiny_llm_dir}", f"model.mate.vlm={out / 'vlm'}",
        "model.mate.projection_hidden=64", "model.mate.seeds=[0]", "model.mate.stage1_caption_steps=2",
        "model.mate.stage1_document_steps=0", "model.mate.stage2_steps=2", "model.mate.stage2_pairs=32",
        "model.mate.lora_rank=2", "train.num_workers=0", "train.zero_stage=0", "train.batch_size=16",
        "train.warmup_steps=0", "train.checkpoint_every=100", "train.eval_every=100",
    ]
    cfg = load_config("configs/mate.yaml", overrides)
    return cfg, run_mate(cfg)


def test_report_has_both_models_and_every_text_kind(mate_run):
    cfg, result = mate_run
    report = open(result["report"]).read()
    assert "MATE" in report and "CLIP-style dual encoder" in report
    assert "image→long caption" in report and "document→image" in report
    for metrics in result["per_seed"][0].values():
        keys = [k for k in metrics if k.endswith("r@1")]
        assert len(keys) == 6 and all(0.0 <= metrics[k] <= 1.0 for k in keys)
        assert metrics["n_test"] == 48


def test_every_stage_is_a_child_run_of_the_parent(mate_run):
    cfg, result = mate_run
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.run.mlflow_experiment)
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    names = {r.info.run_name for r in children}
    assert names == {"mate-test-seed0-captions", "mate-test-seed0-images"}  # the VLM is given; 1b has 0 steps


def test_llm_side_is_bit_identical_after_all_stages(mate_run, tiny_llm_dir):
    _, result = mate_run
    final = load_embedder(result["models"][0]["mate"])
    original = load_file(str(tiny_llm_dir / "model.safetensors"))
    trained = final.llm.model.state_dict()
    assert original.keys() <= trained.keys()
    assert all(torch.equal(original[k], trained[k]) for k in original)


def test_cached_llm_vectors_are_the_trained_models_text_embeddings(mate_run):
    cfg, result = mate_run
    final = load_embedder(result["models"][0]["mate"])
    rows = pq.read_table(os.path.join(cfg.run.output_dir, "mate", "targets", "test")).slice(0, 4).to_pydict()
    for column in ("long_caption", "document"):
        np.testing.assert_allclose(final.encode_texts(rows[column]).numpy(), np.stack(rows[f"{column}_emb"]),
                                   atol=1e-5)


def test_a_rerun_skips_finished_stages_and_reports_the_same(mate_run):
    from jobs.mate import run_mate

    cfg, result = mate_run
    again = run_mate(cfg)
    assert again["models"] == result["models"] and again["parent_run_id"] == result["parent_run_id"]
    assert again["per_seed"] == result["per_seed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_mate_model_embeds_a_text_longer_than_the_vlm_window(mate_run):
    from ray import serve

    from serve.app import build_app

    _, result = mate_run
    model_path = result["models"][0]["mate"]
    model = load_embedder(model_path)
    text = " ".join(["The forecast calls for rain by the evening."] * 12 + ["a large blue square left of a circle"])
    assert len(model.vlm.tokenize([text])["input_ids"][0]) == model.vlm.max_text_tokens  # the VLM would truncate
    assert len(model.tokenize([text])["window_owner"]) > 1  # the LLM side chunks it
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"embedder": model_path, "max_text_chars": 20_000}), name="maple", route_prefix="/")
        response = requests.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": [text, "a red circle"],
                                                                                 "encoding_format": "float"},
                                 timeout=120)
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(got, model.encode_texts([text, "a red circle"]).numpy(), atol=1e-5)
    finally:
        serve.shutdown()
