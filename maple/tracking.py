"""The one place that opens MLflow runs and logs a run's resolved config.

Tracking defaults to a local SQLite database (MLflow 3 refuses a plain `file:` store); MLFLOW_TRACKING_URI or
`run.mlflow_tracking_uri` point elsewhere (an `mlflow server`). A relative SQLite path is made absolute here, so Ray
workers whose working directory differs write to the same database.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow

from maple.config import Config


def ensure_experiment(cfg: Config) -> str:
    """Select the experiment, creating it with its artifacts beside a SQLite database (not in the working
    directory, which MLflow would otherwise choose); returns its id."""
    mlflow.set_tracking_uri(tracking_uri(cfg))
    name = cfg.run.mlflow_experiment
    if mlflow.get_experiment_by_name(name) is None:
        uri = tracking_uri(cfg)
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            pass
    return mlflow.set_experiment(name).experiment_id


def tracking_uri(cfg: Config) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.run.mlflow_tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def log_config(cfg: Config) -> None:
    """Resolved config as params (flattened keys) and as the YAML artifact `config.yaml`."""
    flat = cfg.to_flat_dict()
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow caps params per batch request
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.log_text(cfg.to_yaml(), "config.yaml")


@contextmanager
def mlflow_run(cfg: Config, job: str, run_name: str | None = None, nested: bool | None = None,
               run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one job: tagged with the job, params = resolved config. A job started inside another's
    run (the demo's stages) becomes its child run unless `nested` says otherwise."""
    if nested is None:
        nested = mlflow.active_run() is not None
    ensure_experiment(cfg)
    with mlflow.start_run(run_id=run_id, run_name=run_name or f"{cfg.run.name}-{job}", nested=nested,
                          tags={"maple.job": job}) as run:
        if run_id is None:
            log_config(cfg)
        yield run


def ui_command(cfg: Config) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri(cfg)} --host 127.0.0.1 --port 5000"


# --- the model registry ------------------------------------------------------------------------------------------

class EmbedderModel(mlflow.pyfunc.PythonModel):
    """A registered maple embedder as an MLflow pyfunc: `predict(["a text", ...])` returns text embeddings; the
    saved embedder directory travels as the artifact `embedder`, which `model_dir` fetches for maple's own loaders."""

    def load_context(self, context) -> None:
        from maple.models.embedder import load_embedder

        self.embedder = load_embedder(context.artifacts["embedder"])

    def predict(self, context, model_input, params=None):
        texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
        return self.embedder.encode_texts([str(t) for t in texts]).numpy()


def register_model(model_dir: str | Path, name: str, python_model: mlflow.pyfunc.PythonModel, key: str) -> str:
    """Log a saved maple model directory as a pyfunc (the directory as artifact `key`) in the active run and
    register it; returns `models:/<name>/<version>`."""
    import safetensors
    import torch
    import transformers

    # Requirements named here: MLflow's inference of them imports the model in a subprocess (minutes on a busy CPU).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                    f"safetensors=={safetensors.__version__}", "pillow"]
    info = mlflow.pyfunc.log_model(name=key, python_model=python_model, pip_requirements=requirements,
                                   artifacts={key: str(model_dir)}, registered_model_name=name)
    return f"models:/{name}/{info.registered_model_version}"


def register_embedder(model_dir: str | Path, name: str) -> str:
    """Register a saved embedder directory (see `register_model`)."""
    return register_model(model_dir, name, EmbedderModel(), "embedder")


MANIFESTS = ("maple_embedder.json", "maple_reranker.json")


def model_dir(spec: str, cfg: Config | None = None) -> str:
    """A local directory for a model spec: a directory as is, or an MLflow `models:/name/version` (or `runs:/`) URI
    downloaded from the registry. A registered maple model is a pyfunc whose saved directory travels as an artifact;
    MLflow files it under the source folder's name (`artifacts/<folder>/`), so it is found by its manifest."""
    if not spec.startswith(("models:/", "runs:/")):
        return spec
    if cfg is not None:
        mlflow.set_tracking_uri(tracking_uri(cfg))
    local = Path(mlflow.artifacts.download_artifacts(spec))
    inner = sorted({p.parent for name in MANIFESTS for p in local.glob(f"artifacts/*/{name}")})
    if len(inner) > 1:
        raise ValueError(f"{spec}: the registered model holds several maple model folders: {inner}")
    return str(inner[0] if inner else local)
