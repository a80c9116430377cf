"""What several jobs share: resolving model specs, training, mining or evaluating inside an MLflow run, and building
the search index.

These compose library components (each given its own config section) with the tracking layer; the library itself
never sees the whole `Config`. Jobs import this module, never each other.

What loads torch and transformers (the model families, the training loop, the served models) is imported by the
functions that use it: the drivers of the data, mining, evaluation and index jobs only hand model paths to Ray Data's
actors, and importing those libraries cost each of them ~6 s of CPU at start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pyarrow as pa
import ray.data

from maple.config import Config
from maple.data.files import atomic_path
from maple.data.quarantine import write_quarantine
from maple.data.schema import DOCUMENTS_SCHEMA
from maple.data.splits import split_rows
from maple.models.batch_inference import EmbedColumns
from maple.retrieval.index import build_index
from maple.runtime import cluster_gpus
from maple.section import SetupError
from maple.serving.cards import TINY_SOURCE, local_model_dir, model_card
from maple.serving.search_index import save_search_index
from maple.stages.capacity import check_accelerator, cluster_capacity
from maple.stages.evaluate import evaluate_many
from maple.stages.mining import mine_pairs
from maple.tracking import log_metrics, mlflow_run, model_dir, register_model, tracking_uri, training_run
from maple.train.config import TrainConfig

if TYPE_CHECKING:
    from maple.train.loop import TrainResult
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
        from maple.models.families import build_embedder

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
    from maple.train.loop import run_training, storage_path

    check_training_gpus(cfg.train, cluster_gpus())
    check_accelerator(cfg.train.accelerator_type, "train.accelerator_type", cluster_capacity())
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
             reranker: str | None = None, reranked: set[str] | None = None) -> dict[str, dict[str, float]]:
    """`maple.stages.evaluate.evaluate_many` over model specs (directories, `models:/` URIs, or None for the
    untrained twin) on the world's splits; `reranker` (default eval.reranker) adds retrieve-then-rerank, for the
    models named in `reranked` (default all)."""
    reranker = reranker or cfg.eval.reranker
    models = {name: resolve_model(cfg, spec) for name, spec in specs.items()}
    return evaluate_many(cfg.eval, world_dir(cfg), models, out_root,
                         model_dir(reranker, tracking_uri(cfg.run)) if reranker else None, cfg.reranker, reranked)


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
    from maple.recipes.reranker import RerankerTask, training_section

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


# --- the search index (jobs/index.py; `maple demo --serve` builds the search page's) ---------------------------------

_PAYLOAD_SKIP = {"id", "image", "image_emb", "image_error", "captions_emb"}


def served_embedder_dir(cfg: Config) -> str:
    """The served embedder as a directory for the actor pool: the spec's directory or registry download, or the
    server's tiny twin (`maple.serving.models.tiny_embedder`) saved once under `run.output_dir`."""
    spec = cfg.serve.embedder
    if spec:
        return local_model_dir(spec, cfg.serve.mlflow_tracking_uri or tracking_uri(cfg.run))
    path = Path(cfg.run.output_dir) / "models" / TINY_SOURCE
    if not (path / "maple_embedder.json").exists():
        from maple.serving.models import tiny_embedder

        tiny_embedder().save_pretrained(path)
    return str(path)


def _payload(row: dict) -> str:
    return json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()
                       if k not in _PAYLOAD_SKIP})


def embed_corpus(cfg: Config, corpus: str, model_path: str) -> tuple[np.ndarray, pa.Table, list[dict]]:
    """Embed the corpus: (M, D) vectors, the M documents (DOCUMENTS_SCHEMA rows) and the quarantined rows."""
    images = cfg.serve.corpus_modality == "image"
    ds = ray.data.read_parquet(corpus)
    if not images:
        ds = ds.drop_columns(["image"])
    columns = {"image_columns": ("image",)} if images else {"text_list_columns": ("captions",)}
    ds = ds.map_batches(EmbedColumns, fn_constructor_kwargs=dict(model_path=model_path, **columns,
                                                                  batch_size=cfg.serve.max_batch_size),
                        batch_size=cfg.serve.max_batch_size, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    vectors, docs, quarantined = [], [], []
    for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
        for row in batch.to_dict("records"):
            if images and row["image_error"]:
                quarantined.append({"id": row["id"], "source": row.get("source"), "stage": "index",
                                    "reason": row["image_error"], "row": _payload(row)})
            elif images:
                vectors.append(row["image_emb"])
                docs.append({"id": row["id"], "text": None, "image": row["image"], "payload": _payload(row)})
            else:
                for k, (caption, vector) in enumerate(zip(row["captions"], row["captions_emb"])):
                    vectors.append(vector)
                    payload = {"pair_id": row["id"], "caption_index": k, **json.loads(_payload(row))}
                    payload.pop("captions", None)
                    docs.append({"id": f"{row['id']}#{k}", "text": str(caption), "image": None,
                                 "payload": json.dumps(payload)})
    if not vectors:
        raise ValueError(f"{corpus}: no row could be indexed ({len(quarantined)} quarantined); check the corpus")
    return np.stack(vectors).astype(np.float32), pa.Table.from_pylist(docs, schema=DOCUMENTS_SCHEMA), quarantined


def build_search_index(cfg: Config) -> dict:
    """The index job's work (jobs/index.py; the demo's search page too): embed `serve.corpus`, index the vectors and
    save them with the documents into `serve.index`; returns the manifest written beside the index."""
    if isinstance(cfg.serve.index, list):
        raise SetupError(f"serve.index={cfg.serve.index}: the index job writes one folder; name one, and run the job "
                         "once per modality (serve.corpus_modality=image, then text) to serve both")
    corpus = cfg.serve.corpus or str(Path(cfg.run.output_dir) / "world" / "test")
    out = Path(cfg.serve.index or Path(cfg.run.output_dir) / "index")
    model_path = served_embedder_dir(cfg)
    vectors, documents, quarantined = embed_corpus(cfg, corpus, model_path)
    index = build_index(vectors, cfg.serve.index_kind, ids=documents.column("id").to_pylist(), seed=cfg.run.seed)
    card = model_card(cfg.serve.embedder, "embedding", cfg.serve.mlflow_tracking_uri, index.dim)
    manifest = {"embedder": cfg.serve.embedder or TINY_SOURCE, "embedder_id": card.id,
                "embedder_version": card.version, "modality": cfg.serve.corpus_modality, "corpus": corpus,
                "kind": index.kind, "quarantined": len(quarantined)}
    with atomic_path(out) as tmp:  # written aside and moved into place: a server never loads a half-written index
        save_search_index(tmp, index, documents, manifest)
        write_quarantine(quarantined, tmp, "index")
    return {**manifest, "size": index.ntotal, "dim": index.dim, "path": str(out)}
