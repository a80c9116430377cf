"""What every saved maple model shares: its Hugging Face parts (beside the manifest, `maple.models.manifest`), and
where a model runs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


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
