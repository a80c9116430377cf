"""The one `Embedder` interface every model family implements, and loading by family.

An embedder maps images and texts to L2-normalised vectors in one space:

- `tokenize(texts) -> dict[str, Tensor]` and `preprocess(images) -> dict[str, Tensor]` turn raw inputs into model
  inputs (done in data loaders / Ray Data stages, not in the training step);
- `embed_texts(**inputs)`, `embed_images(**inputs) -> (N, D)` are differentiable (the training step calls them);
- `encode_texts(texts)`, `encode_images(images) -> (N, D)` are the no-grad conveniences for evaluation and serving.

A saved embedder is a directory: `maple_embedder.json` (family + settings) beside the Hugging Face files (weights as
safetensors, tokenizer, image processor). `load_embedder` reads it back; a plain Hugging Face checkpoint (name or path
without that file) loads when the family is given.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from maple.models.config import ModelConfig

MANIFEST = "maple_embedder.json"


class Embedder(nn.Module, ABC):
    """Base of every family. Subclasses set `family` and implement the abstract methods."""

    family: ClassVar[str] = ""

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
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST).write_text(json.dumps({**self.manifest(), **extra}, indent=1))

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        was_training = self.training
        self.eval()
        out = [self.embed_texts(**_to(self.tokenize(texts[i:i + batch_size]), self.device))
               for i in range(0, len(texts), batch_size)]
        self.train(was_training)
        return torch.cat(out).float().cpu() if out else torch.empty(0, self.embedding_dim)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        was_training = self.training
        self.eval()
        out = [self.embed_images(**_to(self.preprocess(images[i:i + batch_size]), self.device))
               for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out).float().cpu() if out else torch.empty(0, self.embedding_dim)

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        ...


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


# --- families ------------------------------------------------------------------------------------------------------


def _families() -> dict[str, type[Embedder]]:
    # Imported here so that a family's heavy imports load only when that family is used.
    from maple.models.dual_encoder import DualEncoder

    families: dict[str, type[Embedder]] = {"clip": DualEncoder, "siglip": DualEncoder}
    try:
        from maple.models.mllm import MLLMEmbedder

        families["qwen2vl"] = MLLMEmbedder
    except ImportError:
        pass
    for name, module, cls in (("pal", "maple.models.anchor", "AnchorAligner"), ("mate", "maple.models.mate",
                                                                               "MateEmbedder")):
        try:
            families[name] = getattr(__import__(module, fromlist=[cls]), cls)
        except (ImportError, AttributeError):
            pass
    return families


def embedder_class(family: str) -> type[Embedder]:
    families = _families()
    if family not in families:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(families)}")
    return families[family]


def build_embedder(cfg: ModelConfig, seed: int = 0) -> Embedder:
    """The configured embedder: a checkpoint by name or path, or the family's tiny random twin when none is given."""
    cls = embedder_class(cfg.family)
    if cfg.name_or_path:
        return load_embedder(cfg.name_or_path, cfg)
    torch.manual_seed(seed)
    return cls.tiny(cfg)  # type: ignore[attr-defined]


def load_embedder(path: str | Path, cfg: ModelConfig | None = None) -> Embedder:
    """Load a saved maple embedder directory, or a Hugging Face checkpoint of `cfg.family` by name or path."""
    manifest_path = Path(path) / MANIFEST
    if manifest_path.exists():
        family = json.loads(manifest_path.read_text())["family"]
    elif cfg is not None:
        family = cfg.family
    else:
        raise FileNotFoundError(
            f"{path} has no {MANIFEST}; pass a ModelConfig naming the family to load a Hugging Face checkpoint")
    return embedder_class(family).from_pretrained(path, cfg)
