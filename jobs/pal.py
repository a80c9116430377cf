"""PAL recipe: align two frozen encoders by training only K anchors per modality, then evaluate.

`python -m jobs.pal --config configs/pal.yaml` (`maple pal`): [1] the world (synthesised when absent), [2] the frozen
encoders' token features cached once as Parquet by a Ray Data actor pool, [3] the anchors trained from the cache by
the shared Ray Train + DeepSpeed loop (`PalTask`), exported as a servable aligner and registered in MLflow,
[4] zero-shot classification and segmentation (mIoU) from the cache, and retrieval + compositional metrics from the
evaluation job. Writes <run.output_dir>/pal/metrics.json and report.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow

from jobs.common import evaluate, train, world_dir
from maple.config import Config
from maple.data.features import FeatureTensors, feature_paths, read_features
from maple.eval.report import to_markdown
from maple.models.anchor import AnchorAligner
from maple.recipes.pal import PalTask, feature_cache_dir, zero_shot_from_cache
from maple.runtime import init_ray, parse_config
from maple.stages.features import prepare_features
from maple.tracking import log_metrics, mlflow_run


def prepare(cfg: Config, splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[Path, Path]:
    """The world's splits and their cached token features: (world_dir, cache_dir). Finished shards are reused."""
    world, cache = world_dir(cfg), feature_cache_dir(cfg.model.pal, cfg.run.output_dir)
    prepare_features(cfg.world, world, cfg.model, cache, splits, seed=cfg.run.seed, batch_size=cfg.eval.batch_size)
    return world, cache


def train_anchors(cfg: Config, cache: Path) -> Path:
    """Train the anchors from the cache with the shared Ray Train + DeepSpeed loop (checkpoints, MLflow, registry);
    returns the exported aligner directory."""
    import ray.data

    # Workers read the cache: give them an absolute path (their working directory differs).
    task = PalTask(cfg.model.pal, Path(cache).resolve(), seed=cfg.run.seed)
    datasets = {split: ray.data.read_parquet(feature_paths(cache, split)) for split in ("train", "val")}
    return Path(train(cfg, task, datasets, run_name=cfg.run.name).model_dir)


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
    cfg = parse_config(argv, __doc__)
    if cfg.model.family != "pal":
        raise SystemExit(f"jobs.pal trains model.family=pal (got {cfg.model.family!r}); use configs/pal.yaml")
    init_ray(cfg.run)
    world, cache = prepare(cfg)
    model_dir = train_anchors(cfg, cache)
    out = Path(cfg.run.output_dir) / "pal"
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_run(cfg.run, "pal_evaluate", cfg, run_name=f"{cfg.run.name}-eval"):
        cfg.eval.split_dir = str(world)
        metrics = {**evaluate(cfg, {model_dir.name: str(model_dir)})[model_dir.name],
                   **zero_shot(cfg, model_dir, cache)}
        log_metrics(metrics)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (out / "report.md").write_text(to_markdown(metrics, f"PAL: {model_dir}"))
        mlflow.log_artifacts(str(out), "pal")
    print(json.dumps({"model": str(model_dir), "report": str(out / "report.md"),
                      "t2i_r@1": metrics.get("t2i_r@1"), "shape_miou": metrics.get("shape_miou")}))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
