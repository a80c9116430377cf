"""The PAL recipe end to end on a tiny synthetic world on a local Ray: the job (cache, train, export, evaluate) and
the data-scaling study reusing its cache."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from maple.models.anchor import AnchorAligner
from maple.models.families import load_embedder

RECIPE = str(Path(__file__).parents[2] / "configs" / "pal.yaml")


@pytest.fixture(scope="module")
def pal_run(ray_local, mlflow_uri, tmp_path_factory):
    from jobs.pal import main

    out = tmp_path_factory.mktemp("pal_job")
    overrides = [f"run.output_dir={out}", "run.name=pal-test", "world.n_train=64", "world.n_val=16", "world.n_test=16",
                 "world.n_compositional=12", "world.shard_size=32", "model.pal.num_anchors=8", "train.steps=4",
                 "train.batch_size=16", "train.checkpoint_every=2", "train.eval_every=2", "eval.batch_size=16"]
    return out, overrides, main(["--config", RECIPE, *overrides])


def test_pal_job_exports_a_servable_aligner_with_the_trained_anchors(pal_run):
    out, _, _ = pal_run
    model = load_embedder(out / "models" / "pal-test")
    untrained = AnchorAligner.from_pretrained(out / "pal" / "features" / "encoders")
    assert isinstance(model, AnchorAligner) and model.embedding_dim == 8
    assert not model.head.image_anchors.equal(untrained.head.image_anchors)


def test_pal_job_reports_retrieval_compositional_and_zero_shot_metrics(pal_run):
    out, _, metrics = pal_run
    assert json.loads((out / "pal" / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    for key in ("t2i_r@1", "i2t_r@1", "comp_all_accuracy", "shape_miou", "shape_zs_accuracy", "colour_miou"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_pal_study_gives_mean_and_std_for_both_methods_at_every_size(pal_run, mlflow_uri):
    from jobs.pal_study import main

    out, overrides, _ = pal_run
    results = main(["--sizes", "16,32", "--seeds", "2", "--config", RECIPE, *overrides, "train.steps=3"])
    summary = results["summary"]
    assert {(r["method"], r["size"]) for r in summary} == {(m, n) for m in ("pal", "linear") for n in (16, 32)}
    assert all(r["seeds"] == 2 and r["miou_std"] >= 0 for r in summary)
    assert len(results["points"]) == 8
    table = (out / "pal_study" / "study.md").read_text()
    assert "| PAL anchors | 32 |" in table and "| linear projection | 16 |" in table
    assert (out / "pal_study" / "study.png").stat().st_size > 1000
    runs = mlflow.search_runs(experiment_names=["maple"], filter_string="tags.`maple.job` = 'pal_study'")
    assert len(runs) >= 1 and "metrics.pal_mean_r_at_1" in runs.columns
