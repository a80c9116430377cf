"""The manifest of a saved maple model: a saved embedder or reranker is a directory holding `maple_embedder.json` /
`maple_reranker.json` (the family or kind and the settings that rebuild it) beside the Hugging Face files (weights as
safetensors, tokenizer, image processor). No torch here: drivers that only find or name models (tracking, the jobs)
read manifests without loading a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EMBEDDER_MANIFEST = "maple_embedder.json"
RERANKER_MANIFEST = "maple_reranker.json"


def read_manifest(path: str | Path, name: str) -> dict[str, Any]:
    """The manifest `name` in directory `path`, or {} when there is none (a plain Hugging Face checkpoint)."""
    manifest = Path(path) / name
    return json.loads(manifest.read_text()) if manifest.exists() else {}


def write_manifest(path: str | Path, name: str, data: dict[str, Any]) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(data, indent=1))
