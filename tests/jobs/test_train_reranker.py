"""The reranker training job end to end on the synthetic world, on the session's local Ray.

The chain is the real one, each stage the project's own: a tiny CLIP embedder trained a few steps by the shared loop
(`jobs.common.train` + `EmbedderTask`), the mining pipeline (`jobs.common.mine`, reference judge) over it, then
`jobs.train_reranker` training a cross-encoder over that embedder's (frozen) towers on the mined rows (2 Ray Train workers, DeepSpeed ZeRO-2,
checkpoints, MLflow, registry). One run (module fixture) serves every property.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from maple.config import load_config
from maple.data.images import decode_image
from maple.eval.rerank import compositional_rerank_report
from maple.models.cross_encoder import CrossEncoderReranker
from maple.models.families import load_reranker
from maple.tracking import model_dir

STEPS = 20


@pytest.fixture(scope="module")
def trained(small_world, ray_local, mlflow_uri, tmp_path_factory):
    import ray.data

    from jobs.common import mine, train
    from jobs.train_reranker import main
    from maple.recipes.embedder import EmbedderTask

    world, _ = small_world
    tmp = tmp_path_factory.mktemp("train_reranker")
    # the embedder to mine with trains in Ray Train's local mode; the reranker job below runs on 2 workers
    common = [f"run.output_dir={tmp}", "run.name=rre2e", "train.num_workers=0", "train.checkpoint_every=1000",
              "train.eval_every=1000", "train.warmup_steps=2"]
    embedder_cfg = load_config(None, [*common, "train.steps=20", "train.batch_size=32", "train.lr=2e-3",
                                      f"train.output={tmp / 'embedder'}"])
    train(embedder_cfg, EmbedderTask(embedder_cfg.model, embedder_cfg.train, embedder_cfg.eval),
          {"train": ray.data.read_parquet(str(world / "train"))}, run_name="rre2e-embedder", register_name="")
    mine(load_config(None, [*common, f"mine.input={world / 'train'}", f"mine.output={tmp / 'mined'}",
                            f"mine.model={tmp / 'embedder'}", "mine.top_k=8", "mine.num_hard_negatives=4",
                            "mine.queries_per_batch=64"]))
    argv = [f"run.output_dir={tmp}", "run.name=rre2e", f"reranker.input={tmp / 'mined' / 'judged'}",
            f"reranker.name_or_path={tmp / 'embedder'}", f"reranker.steps={STEPS}", "reranker.batch_size=16",
            "reranker.listwise_size=3", "reranker.lr=1e-3", "reranker.val_fraction=0.1", "train.num_workers=2",
            "train.checkpoint_every=10", "train.eval_every=10", "train.warmup_steps=2"]
    result = main(argv)
    return {"tmp": tmp, "world": world, "result": result}


def test_the_job_exports_a_loadable_cross_encoder_and_registers_it(trained):
    result = trained["result"]
    assert Path(result.model_dir) == trained["tmp"] / "models" / "reranker"
    assert isinstance(load_reranker(result.model_dir), CrossEncoderReranker)
    assert result.registry_uri == "models:/rre2e-reranker/1"
    assert isinstance(load_reranker(model_dir(result.registry_uri)), CrossEncoderReranker)


def test_mlflow_run_holds_every_steps_loss_terms_and_the_val_accuracies(trained):
    client = mlflow.tracking.MlflowClient()
    run = client.get_run(trained["result"].mlflow_run_id)
    assert run.data.tags["maple.job"] == "train_reranker"
    for term in ("loss", "pairwise", "listwise"):
        assert len(client.get_metric_history(run.info.run_id, term)) == STEPS
    assert {"val_pairwise_accuracy", "val_listwise_accuracy"} <= set(run.data.metrics)
    assert run.data.params["reranker.listwise_size"] == "3"


def test_training_lowers_the_loss(trained):
    history = mlflow.tracking.MlflowClient().get_metric_history(trained["result"].mlflow_run_id, "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert np.mean(losses[-6:]) < np.mean(losses[:6])


def test_reranker_over_the_trained_embedder_is_not_significantly_worse_on_the_compositional_test(trained,
                                                                                                record_property):
    """Per row, the embedder is right when s(i, c) > s(i, c_neg); so is the reranker. Not worse: among the rows where
    they disagree, the reranker's losses do not significantly outnumber its wins (one-sided exact binomial test,
    α = 0.05; 60 rows cannot resolve a difference of a row or two). The difference is reported."""
    from scipy.stats import binomtest

    from maple.models.families import load_embedder

    comp = pq.read_table(trained["world"] / "compositional").to_pylist()
    images = [decode_image(r["image"]) for r in comp]
    negative_images = [decode_image(r["negative_image"]) if r["negative_image"] else None for r in comp]
    captions, negatives = [r["caption"] for r in comp], [r["negative_caption"] for r in comp]
    embedder = load_embedder(trained["tmp"] / "embedder")
    z_img, z_cap, z_neg = (embedder.encode_images(images), embedder.encode_texts(captions),
                           embedder.encode_texts(negatives))
    embedder_right = ((z_img * z_cap).sum(1) > (z_img * z_neg).sum(1)).numpy()
    reranker = load_reranker(trained["result"].model_dir)
    scores = np.array([reranker.score(im, [c, n]) for im, c, n in zip(images, captions, negatives)])
    reranker_right = scores[:, 0] > scores[:, 1]
    report = compositional_rerank_report(reranker.score, images, captions, negatives, negative_images,
                                         [r["negative_type"] for r in comp], np.array([r["held_out"] for r in comp]))
    assert report["rerank_comp_all_accuracy"] == pytest.approx(reranker_right.mean())
    wins, losses = int((reranker_right & ~embedder_right).sum()), int((embedder_right & ~reranker_right).sum())
    difference = float(reranker_right.mean() - embedder_right.mean())
    record_property("compositional_accuracy", json.dumps({"embedder": float(embedder_right.mean()),
                                                          "reranked": float(reranker_right.mean()),
                                                          "difference": difference, "wins": wins, "losses": losses}))
    print(f"compositional accuracy: embedder {embedder_right.mean():.3f}, reranked {reranker_right.mean():.3f}, "
          f"difference {difference:+.3f} ({wins} rows won, {losses} lost)")
    if wins + losses:
        assert binomtest(losses, wins + losses, 0.5, alternative="greater").pvalue > 0.05
