"""What every saved maple model shares: a manifest file beside Hugging Face parts, and where a model runs.

A saved embedder or reranker is a directory: `maple_embedder.json` / `maple_reranker.json` (the family or kind and
the settings that rebuild it) beside the Hugging Face files (weights as safetensors, tokenizer, image processor).
"""

from __future__ import annotations

import contextlib
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


def inference_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA card that has it (tensor-core matmuls, half the activation memory); nothing elsewhere:
    CPU results stay float32 and bit-for-bit what the tests check."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch's tensors to `device`; to a GPU through pinned memory, asynchronously."""
    if device.type != "cuda":
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
