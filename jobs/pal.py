"""PAL recipe: align two frozen encoders by training only K anchors per modality, then evaluate.

`python -m jobs.pal --config configs/pal.yaml` (`maple pal`): [1] the world (synthesised when absent), [2] the frozen
encoders' token features cached once as Parquet by a Ray Data actor pool, [3] the anchors trained from the cache by
the shared Ray Train + DeepSpeed loop (`PalTask`), exported as a servable aligner and registered in MLflow,
[4] zero-shot classification and segmentation (mIoU) from the cache, and retrieval + compositional metrics from the
evaluation job. Writes <run.output_dir>/pal/metrics.json and report.md.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import mlflow

from jobs.common import init_ray, parse_config
from maple.config import Config
from maple.data.synth import synthesize
from maple.eval.report import to_markdown
from maple.models.anchor import AnchorAligner
from maple.models.feature_cache import FeatureTensors, cache_features, ensure_encoders, feature_paths, read_features
from maple.models.pal_task import (PalTask, build_head, export_aligner, feature_cache_dir, train_head,
                                   zero_shot_from_cache)
from maple.tracking import mlflow_run

log = logging.getLogger("maple.pal")


def prepare(cfg: Config, splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[Path, Path]:
    """The world's splits and their cached token features: (world_dir, cache_dir). Finished shards are reused."""
    world = Path(cfg.eval.split_dir or Path(cfg.run.output_dir) / "world")
    if not all((world / s).exists() for s in splits):
        synthesize(cfg.world, world)
    cache = feature_cache_dir(cfg)
    encoders = ensure_encoders(cfg.model, cache, seed=cfg.run.seed)
    for split in splits:
        report = cache_features(world / split, cache, split, encoders, batch_size=cfg.eval.batch_size)
        log.info("feature cache %s: %d shards computed, %d reused, %d rows, %d quarantined", split,
                 len(report["computed"]), len(report["skipped"]), report["rows"], report["quarantined"])
    return world, cache


def train(cfg: Config, cache: Path) -> Path:
    """Train the anchors from the cache; returns the exported aligner directory.

    With `maple.train.loop` present: the shared Ray Train + DeepSpeed loop (checkpoints, MLflow, registry). Without
    it: the same step in this process (`train_head`), exported and logged the same way.
    """
    try:
        from maple.train.loop import run_training
    except ImportError:
        run_training = None
    if run_training is not None:
        import ray.data

        # Workers build the head from the cache: give them an absolute path (their working directory differs).
        cfg = cfg.model_copy(deep=True)
        cfg.model.pal.feature_cache = str(Path(cache).resolve())
        datasets = {split: ray.data.read_parquet(feature_paths(cache, split)) for split in ("train", "val")}
        return Path(run_training(cfg, PalTask(), datasets, run_name=cfg.run.name).model_dir)
    log.warning("maple.train.loop is not available: training the anchors in this process")
    pal, out = cfg.model.pal, Path(cfg.train.output or Path(cfg.run.output_dir) / "models" / cfg.run.name)
    table = read_features(cache, "train")
    head = build_head("pal", table, pal.num_anchors, pal.tau_pool, cfg.run.seed, pal.anchor_init)
    with mlflow_run(cfg, "pal_train", run_name=f"{cfg.run.name}-train"):
        losses = train_head(head, FeatureTensors(table), cfg.train.steps, cfg.train.batch_size, cfg.train.lr, pal.tau,
                            cfg.run.seed, cfg.train.weight_decay)
        for step, loss in enumerate(losses):
            mlflow.log_metric("loss", loss, step=step)
        export_aligner(head, cache, out)
    return out


def zero_shot(cfg: Config, model_dir: Path, cache: Path, split: str = "test") -> dict[str, float]:
    """Zero-shot classification and segmentation by shape and by colour on a cached split."""
    aligner = AnchorAligner.from_pretrained(model_dir)
    features = FeatureTensors(read_features(cache, split))
    metrics = {}
    for attribute, classes in (("shape", cfg.world.shapes), ("colour", cfg.world.colours)):
        found = zero_shot_from_cache(aligner.head, features, aligner, classes, cfg.world.image_size, attribute)
        metrics.update({f"{attribute}_{k}": v for k, v in found.items()})
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    from jobs.evaluate import evaluate

    cfg = parse_config(argv, __doc__)
    if cfg.model.family != "pal":
        raise SystemExit(f"jobs.pal trains model.family=pal (got {cfg.model.family!r}); use configs/pal.yaml")
    init_ray(cfg)
    world, cache = prepare(cfg)
    model_dir = train(cfg, cache)
    out = Path(cfg.run.output_dir) / "pal"
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_run(cfg, "pal_evaluate", run_name=f"{cfg.run.name}-eval"):
        cfg.eval.split_dir = str(world)
        metrics = {**evaluate(cfg, str(model_dir), model_dir.name), **zero_shot(cfg, model_dir, cache)}
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items() if v == v})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (out / "report.md").write_text(to_markdown(metrics, f"PAL: {model_dir}"))
        mlflow.log_artifacts(str(out), "pal")
    print(json.dumps({"model": str(model_dir), "report": str(out / "report.md"),
                      "t2i_r@1": metrics.get("t2i_r@1"), "shape_miou": metrics.get("shape_miou")}))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
