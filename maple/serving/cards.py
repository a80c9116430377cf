"""How a served model is found and named, without loading it (no torch: the index job's driver names the model its
actors embed with): a spec is an MLflow registry URI (`models:/name/version` or `models:/name@alias`), a checkpoint
directory, or None for the tiny random twin."""

from __future__ import annotations

from pathlib import Path

from maple.serving.api import ModelCard
from maple.tracking import model_dir

TINY_SOURCE = "tiny-random"
TINY_SEED = 0  # the server and jobs/index.py must build the same twin for the demo's queries to match its index


def model_card(spec: str | None, kind: str, tracking_uri: str | None = None, dimensions: int | None = None,
               tiny_id: str = "maple-tiny") -> ModelCard:
    """How a served model is named: `models:/maple/3` -> id "maple", version "3" (an alias is resolved to its
    version when the registry answers); a directory -> its name, version "local"; None -> the tiny twin."""
    if spec is None:
        return ModelCard(id=tiny_id, version="random", kind=kind, source=TINY_SOURCE, dimensions=dimensions)
    if spec.startswith("models:/"):
        ref = spec[len("models:/"):].strip("/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = _alias_version(name, alias, tracking_uri) or alias
        else:
            name, _, version = ref.partition("/")
        return ModelCard(id=name, version=version or "latest", kind=kind, source=spec, dimensions=dimensions)
    return ModelCard(id=Path(spec).resolve().name, version="local", kind=kind, source=spec, dimensions=dimensions)


def _alias_version(name: str, alias: str, tracking_uri: str | None) -> str | None:
    import mlflow

    try:
        return str(mlflow.MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def local_model_dir(spec: str, tracking_uri: str | None = None) -> str:
    """A directory for a spec: the directory itself, or the registry download (`maple.tracking.model_dir`)."""
    if spec.startswith(("models:/", "runs:/")):
        return model_dir(spec, tracking_uri)
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"model {spec!r} is neither a directory nor a models:/ URI; pass a checkpoint "
                                "directory written by save_pretrained or a registered models:/name/version")
    return spec
