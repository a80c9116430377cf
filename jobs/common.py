"""What several jobs share: resolving model specs, and training, mining or evaluating inside an MLflow run.

These compose library components (each given its own config section) with the tracking layer; the library itself
never sees the whole `Config`. Jobs import this module, never each other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import ray.data

from maple.config import Config
from maple.models.families import build_embedder
from maple.recipes.reranker import RerankerTask, split_rows, training_section
from maple.runtime import cluster_gpus
from maple.section import SetupError
from maple.stages.evaluate import evaluate_many
from maple.stages.mining import mine_pairs
from maple.tracking import log_metrics, mlflow_run, model_dir, register_model, tracking_uri, training_run
from maple.train.config import TrainConfig
from maple.train.loop import TrainResult, run_training, storage_path
from maple.train.task import TrainTask


def world_dir(cfg: Config) -> Path:
    """The synthetic world's folder: eval.split_dir, else <run.output_dir>/world."""
    return Path(cfg.eval.split_dir or Path(cfg.run.output_dir) / "world")


def resolve_model(cfg: Config, spec: str | None) -> str:
    """A local embedder directory: the spec itself, a registry download, or the untrained tiny twin saved once."""
    if spec:
        return model_dir(spec, tracking_uri(cfg.run))
    path = Path(cfg.run.output_dir) / "models" / f"untrained-{cfg.model.family}-seed{cfg.run.seed}"
    if not (path / "maple_embedder.json").exists():
        build_embedder(cfg.model, seed=cfg.run.seed).save_pretrained(path)
    return str(path)


def check_training_gpus(train: TrainConfig, gpus: float) -> None:
    """train.use_gpu on a cluster without the GPUs for it: Ray Train would wait for them forever."""
    needed = max(train.num_workers, 1)
    if train.use_gpu and gpus < needed:
        raise SetupError(f"train.use_gpu=true asks for {needed} GPU{'s' * (needed > 1)} (one per training worker) but "
                         f"the Ray cluster has {gpus:g}; set train.use_gpu=false to train on CPU, or join a cluster "
                         "with GPUs (--address)")


def train(cfg: Config, task: TrainTask, datasets: dict[str, Any], run_name: str,
          register_name: str | None = None, on_step: Callable[[], None] | None = None) -> TrainResult:
    """`run_training` inside the run's one MLflow run (kept across resumes), then the export registered as
    `register_name` (default train.register_name, else <run.name>-<embedder|reranker>); `register_name=""` skips
    registration. `on_step`: the job's progress display, ticked after each step (`TrainTask.on_step`)."""
    check_training_gpus(cfg.train, cluster_gpus())
    task.on_step = on_step
    target = training_run(cfg.run, task.name, run_name, storage_path(cfg.train, cfg.run), cfg)
    result = run_training(cfg.train, cfg.run, task, datasets, run_name, target)
    name = register_name if register_name is not None else cfg.train.register_name or f"{cfg.run.name}-{task.kind}"
    if name:
        with mlflow_run(cfg.run, task.name, run_name=run_name, run_id=target.run_id):
            result.registry_uri = register_model(result.model_dir, name, task.kind)
    return result


def mine(cfg: Config, **stage: Any) -> dict:
    """The mining pipeline (`maple.stages.mining.mine_pairs`, `stage`: its extra arguments) with the current embedder
    (mine.model), in one MLflow run that records the judge's facts, the counts, the throughput and the summary
    artifacts."""
    with mlflow_run(cfg.run, "mine", cfg):
        summary = mine_pairs(cfg.mine, cfg.judge, cfg.data, cfg.run, resolve_model(cfg, cfg.mine.model), cfg.rewrite,
                             cfg.world, **stage)
        mlflow.log_params({f"judge_facts.{k}": v for k, v in summary["judge"].items()})
        log_metrics({**summary["counts"], **summary["throughput"], "pairs_embedded": summary["pairs_embedded"],
                     "queries_this_run": summary["queries_this_run"]})
        mlflow.log_artifact(summary["summary_path"])
        mlflow.log_artifact(summary["histogram_path"])
        mlflow.log_param("mine.output_path", summary["output"])
    return summary


def evaluate(cfg: Config, specs: dict[str, str | None], out_root: Path | None = None,
             reranker: str | None = None) -> dict[str, dict[str, float]]:
    """`maple.stages.evaluate.evaluate_many` over model specs (directories, `models:/` URIs, or None for the
    untrained twin) on the world's splits; `reranker` (default eval.reranker) adds retrieve-then-rerank."""
    reranker = reranker or cfg.eval.reranker
    models = {name: resolve_model(cfg, spec) for name, spec in specs.items()}
    return evaluate_many(cfg.eval, world_dir(cfg), models, out_root,
                         model_dir(reranker, tracking_uri(cfg.run)) if reranker else None, cfg.reranker)


def reranker_datasets(path: Path, val_fraction: float) -> dict:
    """The mined rows, `val_fraction` of them held out by a hash of the row id."""
    rows = ray.data.read_parquet(str(path))
    if val_fraction <= 0:
        return {"train": rows}
    return {name: rows.map_batches(split_rows, batch_format="pyarrow", fn_kwargs={"fraction": val_fraction, "val": val})
            for name, val in (("train", False), ("val", True))}


def train_reranker(cfg: Config, judged: Path, run_name: str, on_step: Callable[[], None] | None = None
                   ) -> TrainResult:
    """Train the configured reranker on the judged rows (train.* for the loop's machinery, reranker.* for the
    model, lr, steps and batch size), registered as <run.name>-reranker; `on_step` as for `train`."""
    reranker = cfg.reranker
    if reranker.name_or_path:  # a models:/ URI becomes the registry download
        reranker = reranker.model_copy(update={"name_or_path": model_dir(reranker.name_or_path,
                                                                         tracking_uri(cfg.run))})
    output = reranker.output or str(Path(cfg.run.output_dir) / "models" / "reranker")
    run_cfg = cfg.model_copy(update={"train": training_section(reranker, cfg.train, output), "reranker": reranker})
    task = RerankerTask(reranker, run_cfg.train.max_grad_norm, seed=cfg.run.seed)
    result = train(run_cfg, task, reranker_datasets(judged, reranker.val_fraction), run_name,
                   register_name=f"{cfg.run.name}-reranker", on_step=on_step)
    return result
