"""The one place that opens MLflow runs, logs a run's config and metrics, and keeps the model registry.

Tracking defaults to a local SQLite database (MLflow 3 refuses a plain `file:` store); MLFLOW_TRACKING_URI or
`run.mlflow_tracking_uri` point elsewhere (an `mlflow server`). A relative SQLite path is made absolute here, so Ray
workers whose working directory differs write to the same database. Functions take the `run` section (where to
track) and, where they log a config, any config section or the whole `Config` (its fields become params).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pyarrow.fs as pafs
from pydantic import BaseModel

from maple.eval.metrics import metric_name
from maple.models.manifest import EMBEDDER_MANIFEST, RERANKER_MANIFEST
from maple.section import RunConfig
from maple.train.config import MlflowTarget


def tracking_uri(run: RunConfig) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or run.mlflow_tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def ensure_experiment(run: RunConfig) -> str:
    """Select the experiment, creating it with its artifacts beside a SQLite database (not in the working
    directory, which MLflow would otherwise choose); returns its id."""
    uri = tracking_uri(run)
    mlflow.set_tracking_uri(uri)
    name = run.mlflow_experiment
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            pass
    return mlflow.set_experiment(name).experiment_id


def flat_params(config: BaseModel) -> dict[str, str]:
    """`{"train.lr": "0.0001", ...}`: a config (section) as MLflow params, lists as JSON."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    walk("", config.model_dump(mode="json"))
    return flat


def log_config(config: BaseModel) -> None:
    """The config as params (flattened keys) and as the YAML artifact `config.yaml`."""
    import yaml

    items = list(flat_params(config).items())
    for i in range(0, len(items), 100):  # MLflow caps params per batch request
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")


@contextmanager
def mlflow_run(run: RunConfig, job: str, config: BaseModel | None = None, run_name: str | None = None,
               nested: bool | None = None, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one job: tagged with the job, params = `config` (the resolved config) when the run is new.
    A job started inside another's run (the demo's stages) becomes its child run unless `nested` says otherwise."""
    if nested is None:
        nested = mlflow.active_run() is not None
    ensure_experiment(run)
    with mlflow.start_run(run_id=run_id, run_name=run_name or f"{run.name}-{job}", nested=nested,
                          tags={"maple.job": job}) as active:
        if run_id is None and config is not None:
            log_config(config)
        yield active


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    """Log the finite metrics of the active run, under MLflow-safe names (`maple.eval.metrics.metric_name`)."""
    mlflow.log_metrics({metric_name(prefix + k): float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and np.isfinite(v)}, step=step)


def ui_command(run: RunConfig) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri(run)} --host 127.0.0.1 --port 5000"


TRAINING_RUN_STATE = "maple_run.json"  # beside the Ray Train run in storage: the MLflow run id across re-submissions


def training_run(run: RunConfig, job: str, run_name: str, storage: str, config: BaseModel | None = None
                 ) -> MlflowTarget:
    """The MLflow run a training run logs to: the one an earlier submission of `run_name` recorded in its Ray Train
    storage folder (so a resumed or re-submitted run stays one MLflow run), else a new one (params = `config`),
    recorded there. `storage` is the loop's (`maple.train.loop.storage_path`)."""
    fs, root = pafs.FileSystem.from_uri(storage)
    path = f"{root}/{run_name}/{TRAINING_RUN_STATE}"
    target = dict(tracking_uri=tracking_uri(run), experiment=run.mlflow_experiment)
    if fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            return MlflowTarget(**target, run_id=json.loads(f.read().decode())["mlflow_run_id"])
    with mlflow_run(run, job, config, run_name=run_name) as active:
        run_id = active.info.run_id
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps({"mlflow_run_id": run_id, "run_name": run_name}).encode())
    return MlflowTarget(**target, run_id=run_id)


# --- the model registry ------------------------------------------------------------------------------------------

# MLflow asks each PythonModel for a type hint on `predict`, from which it would validate and convert inputs; ours
# take a list of texts or a DataFrame of them, which no hint it supports names. Its warning is printed at import,
# under a filter MLflow sets itself, so only recording the warnings of the two class statements keeps it quiet.
with warnings.catch_warnings(record=True):

    class EmbedderModel(mlflow.pyfunc.PythonModel):
        """A registered maple embedder as an MLflow pyfunc: `predict(["a text", ...])` returns text embeddings;
        the saved embedder directory travels as the artifact `embedder`, which `model_dir` fetches for maple's own
        loaders."""

        def load_context(self, context) -> None:
            from maple.models.families import load_embedder

            self.embedder = load_embedder(context.artifacts["embedder"])

        def predict(self, context, model_input, params=None):
            texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
            return self.embedder.encode_texts([str(t) for t in texts]).numpy()

    class RerankerModel(mlflow.pyfunc.PythonModel):
        """A registered maple reranker: `predict({"query": [...], "candidate": [...]})` (texts) returns
        logit_Yes − logit_No per row; the saved reranker directory travels as the artifact `reranker`."""

        def load_context(self, context) -> None:
            from maple.models.families import load_reranker

            self.reranker = load_reranker(context.artifacts["reranker"])

        def predict(self, context, model_input, params=None):
            queries, candidates = list(model_input["query"]), list(model_input["candidate"])
            return [self.reranker.score(str(q), [str(c)])[0] for q, c in zip(queries, candidates)]


PYFUNCS = {"embedder": EmbedderModel, "reranker": RerankerModel}


def register_model(model_dir: str | Path, name: str, kind: str = "embedder") -> str:
    """Log a saved maple model directory (`kind` "embedder" or "reranker") as a pyfunc in the active run, the
    directory as artifact `<kind>`, and register it; returns `models:/<name>/<version>`."""
    import safetensors
    import torch
    import transformers

    if kind not in PYFUNCS:
        raise ValueError(f"register_model: kind must be one of {sorted(PYFUNCS)}, got {kind!r}")
    # Requirements named here: MLflow's inference of them imports the model in a subprocess (minutes on a busy CPU).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                    f"safetensors=={safetensors.__version__}", "pillow"]
    info = mlflow.pyfunc.log_model(name=kind, python_model=PYFUNCS[kind](), pip_requirements=requirements,
                                   artifacts={kind: str(model_dir)}, registered_model_name=name)
    return f"models:/{name}/{info.registered_model_version}"


def model_dir(spec: str, tracking: str | None = None) -> str:
    """A local directory for a model spec: a directory as is, or an MLflow `models:/name/version` (or `runs:/`) URI
    downloaded from the registry (`tracking`: its tracking URI; default: MLflow's current one). A registered maple
    model is a pyfunc whose saved directory travels as an artifact; MLflow files it under the source folder's name
    (`artifacts/<folder>/`), so it is found by its manifest."""
    if not spec.startswith(("models:/", "runs:/")):
        return spec
    if tracking is not None:
        mlflow.set_tracking_uri(tracking)
    local = Path(mlflow.artifacts.download_artifacts(spec))
    inner = sorted({p.parent for name in (EMBEDDER_MANIFEST, RERANKER_MANIFEST)
                    for p in local.glob(f"artifacts/*/{name}")})
    if len(inner) > 1:
        raise ValueError(f"{spec}: the registered model holds several maple model folders: {inner}")
    return str(inner[0] if inner else local)
