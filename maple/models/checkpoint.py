"""What every saved maple model shares: a manifest file beside Hugging Face parts, and where a model runs.

A saved embedder or reranker is a directory: `maple_embedder.json` / `maple_reranker.json` (the family or kind and
the settings that rebuild it) beside the Hugging Face files (weights as safetensors, tokenizer, image processor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

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


def save_hf_parts(path: str | Path, model, tokenizer=None, image_processor=None) -> None:
    """A transformers model (weights as safetensors) with its tokenizer and image processor, in one directory."""
    model.save_pretrained(path, safe_serialization=True)
    for part in (tokenizer, image_processor):
        if part is not None:
            part.save_pretrained(path)


def resolve_device(device: str | None = None) -> torch.device:
    """The device asked for, else the GPU when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
