"""The one `Embedder` interface every model family implements (`maple.models.families` builds and loads them).

An embedder maps images and texts to L2-normalised vectors in one space:

- `tokenize(texts) -> dict[str, Tensor]` and `preprocess(images) -> dict[str, Tensor]` turn raw inputs into model
  inputs (done in data loaders / Ray Data stages, not in the training step);
- `embed_texts(**inputs)`, `embed_images(**inputs) -> (N, D)` are differentiable (the training step calls them);
- `encode_texts(texts)`, `encode_images(images) -> (N, D)` are the no-grad conveniences for evaluation and serving.

A saved embedder is a directory: `maple_embedder.json` (family + settings) beside the Hugging Face files (weights as
safetensors, tokenizer, image processor); `maple.models.families.load_embedder` reads it back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from maple.models.checkpoint import inference_precision, to_device
from maple.models.config import ModelConfig
from maple.models.manifest import EMBEDDER_MANIFEST, write_manifest

MANIFEST = EMBEDDER_MANIFEST


class Embedder(nn.Module, ABC):
    """Base of every family. Subclasses set `family` and implement the abstract methods."""

    family: ClassVar[str] = ""
    lora_targets: ClassVar[list[str]] = []  # module names peft wraps for LoRA / DoRA (`maple.models.lora`)

    # --- the interface ------------------------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ...

    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        ...

    @abstractmethod
    def embed_texts(self, **inputs: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def embed_images(self, **inputs: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        ...

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig | None = None) -> "Embedder":
        ...

    # --- shared conveniences -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def manifest(self) -> dict[str, Any]:
        """Settings written beside the weights so that `load_embedder` rebuilds the same model."""
        return {"family": self.family}

    def _write_manifest(self, path: Path, **extra: Any) -> None:
        write_manifest(path, MANIFEST, {**self.manifest(), **extra})

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        was_training = self.training
        self.eval()
        with inference_precision(self.device):
            out = [self.embed_texts(**to_device(self.tokenize(texts[i:i + batch_size]), self.device))
                   for i in range(0, len(texts), batch_size)]
        self.train(was_training)
        return torch.cat(out).float().cpu() if out else torch.empty(0, self.embedding_dim)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        was_training = self.training
        self.eval()
        with inference_precision(self.device):
            out = [self.embed_images(**to_device(self.preprocess(images[i:i + batch_size]), self.device))
                   for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out).float().cpu() if out else torch.empty(0, self.embedding_dim)

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        ...


def normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
