"""PAL training from cached features: the task's parts on Ray Data batches, the loop lowers the loss, and the exported
aligner computes from raw inputs what the trained head computes from the cache."""

import json

import numpy as np
import pytest
import torch

from maple.config import load_config
from maple.data.features import FeatureTensors, feature_paths, read_features
from maple.data.schema import FEATURES_SCHEMA, PAIRS_SCHEMA
from maple.models.anchor import AnchorAligner, AnchorHead
from maple.recipes.pal import PalTask, build_head, train_head, zero_shot_from_cache


@pytest.fixture(scope="module")
def cfg(pal_cache, tmp_path_factory):
    cache, encoders, _ = pal_cache
    num_anchors = json.loads((encoders / "maple_embedder.json").read_text())["num_anchors"]
    return load_config(None, ["model.family=pal", f"model.pal.num_anchors={num_anchors}",
                              f"model.pal.feature_cache={cache}", f"run.output_dir={tmp_path_factory.mktemp('run')}"])


def task(cfg) -> PalTask:
    return PalTask(cfg.model.pal, cfg.model.pal.feature_cache)


def test_check_rejects_raw_pairs_naming_the_missing_feature_columns(cfg):
    with pytest.raises(ValueError, match="image_tokens"):
        task(cfg).check({"train": PAIRS_SCHEMA})
    task(cfg).check({"train": FEATURES_SCHEMA})


def test_task_builds_an_anchor_head_and_steps_on_ray_batches(cfg, pal_cache, ray_local):
    cache, _, _ = pal_cache
    task = PalTask(cfg.model.pal, cache)
    model, loss_fn = task.build(seed=0)
    assert isinstance(model, AnchorHead)
    params = task.trainable_parameters(model, loss_fn)
    assert {id(p) for p in params} == {id(model.image_anchors), id(model.text_anchors)}
    rows = next(iter(ray_local.data.read_parquet(feature_paths(cache, "train")).iter_batches(batch_size=16,
                                                                                           batch_format="numpy")))
    before = model.image_anchors.detach().clone()
    out = task.step(model, loss_fn, task.collate(model, rows, 0), torch.optim.AdamW(params, lr=1e-2))
    assert np.isfinite(out["loss"]) and not torch.equal(before, model.image_anchors)
    val = next(iter(ray_local.data.read_parquet(feature_paths(cache, "val")).iter_batches(batch_size=None,
                                                                                        batch_format="numpy")))
    metrics = task.evaluate(model, val)
    assert 0.0 <= metrics["val_t2i_r_at_1"] <= 1.0 and 0.0 <= metrics["val_i2t_r_at_1"] <= 1.0


def test_training_from_the_cache_lowers_the_contrastive_loss(pal_cache, cfg):
    cache, _, _ = pal_cache
    table = read_features(cache, "train")
    head = build_head("pal", table, cfg.model.pal.num_anchors, 0.03, seed=0)
    losses = train_head(head, table, steps=40, batch_size=32, lr=1e-2, tau=0.07, seed=0)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_exported_aligner_on_raw_inputs_equals_the_head_on_cached_features(trained_aligner, pal_cache, pal_splits):
    import pyarrow.parquet as pq

    from maple.data.images import decode_image

    cache, _, _ = pal_cache
    aligner = AnchorAligner.from_pretrained(trained_aligner)
    features = FeatureTensors(read_features(cache, "train").slice(0, 4))
    rows = pq.read_table(pal_splits / "train" / "part-00000.parquet").slice(0, 4).to_pylist()
    raw_images = aligner.encode_images([decode_image(r["image"]) for r in rows])
    raw_texts = aligner.encode_texts([r["captions"][0] for r in rows])
    with torch.no_grad():
        cached_images = aligner.head.embed_image_tokens(features.image.float())
        first = features.caption_start[:4]
        cached_texts = aligner.head.embed_text_tokens(features.text[first].float(), features.text_mask[first])
    assert torch.allclose(raw_images, cached_images, atol=5e-3)  # the cache stores float16
    assert torch.allclose(raw_texts, cached_texts, atol=5e-3)


def test_zero_shot_segmentation_from_the_cache_reports_bounded_miou_and_accuracy(trained_aligner, pal_cache):
    cache, _, _ = pal_cache
    aligner = AnchorAligner.from_pretrained(trained_aligner)
    features = FeatureTensors(read_features(cache, "val"))
    shapes = ["circle", "square", "triangle", "diamond"]
    metrics = zero_shot_from_cache(aligner.head, features, aligner, shapes, 64, "shape")
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["zs_accuracy"] <= 1.0
    assert set(metrics) >= {"iou_background", *(f"iou_{s}" for s in shapes)}
