"""The one table of model families: which class builds and loads each embedder family and each reranker kind.

Adding a family is adding a row here (and its tiny twin in the class), not a plugin system. Loading takes a local
directory or a Hugging Face name; MLflow `models:/` URIs are resolved to a directory above this layer
(`maple.tracking.model_dir`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from maple.models.anchor import AnchorAligner
from maple.models.config import ModelConfig, RerankerConfig
from maple.models.cross_encoder import CrossEncoderReranker
from maple.models.dual_encoder import DualEncoder
from maple.models.embedder import MANIFEST, Embedder
from maple.models.generative_reranker import GenerativeReranker
from maple.models.manifest import read_manifest
from maple.models.mate import MateEmbedder
from maple.models.mllm import MLLMEmbedder
from maple.models.reranker import MANIFEST as RERANKER_MANIFEST
from maple.models.reranker import Reranker

EMBEDDERS: dict[str, type[Embedder]] = {
    "clip": DualEncoder,
    "siglip": DualEncoder,
    "qwen2vl": MLLMEmbedder,
    "pal": AnchorAligner,
    "mate": MateEmbedder,
}
RERANKERS: dict[str, type[Reranker]] = {"cross_encoder": CrossEncoderReranker, "generative": GenerativeReranker}


def embedder_class(family: str) -> type[Embedder]:
    if family not in EMBEDDERS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(EMBEDDERS)}")
    return EMBEDDERS[family]


def build_embedder(cfg: ModelConfig, seed: int = 0) -> Embedder:
    """The configured embedder: a checkpoint by name or path, or the family's tiny random twin when none is given."""
    cls = embedder_class(cfg.family)
    if cfg.name_or_path:
        return load_embedder(cfg.name_or_path, cfg)
    torch.manual_seed(seed)
    return cls.tiny(cfg)  # type: ignore[attr-defined]


def load_embedder(path: str | Path, cfg: ModelConfig | None = None) -> Embedder:
    """A saved maple embedder directory, or a Hugging Face checkpoint of `cfg.family` by name or path."""
    family = read_manifest(path, MANIFEST).get("family")
    if family is None:
        if cfg is None:
            raise FileNotFoundError(f"{path} has no {MANIFEST}; pass a ModelConfig naming the family to load a "
                                    "Hugging Face checkpoint")
        family = cfg.family
    return embedder_class(family).from_pretrained(path, cfg)


def build_reranker(cfg: RerankerConfig, seed: int = 0) -> Reranker:
    """The configured reranker: a checkpoint by `cfg.name_or_path`, or the kind's tiny random twin when none is given.

    A cross-encoder over a plain dual encoder (a maple embedder directory or a CLIP/SigLIP checkpoint) gets fresh
    cross layers over those towers."""
    torch.manual_seed(seed)
    if cfg.name_or_path:
        path = cfg.name_or_path
        if read_manifest(path, RERANKER_MANIFEST) or cfg.kind == "generative":
            return load_reranker(path, cfg)
        return CrossEncoderReranker.over_encoder(path, cfg)
    return RERANKERS[cfg.kind].tiny(cfg)  # type: ignore[attr-defined]


def load_reranker(path: str | Path, cfg: RerankerConfig | None = None) -> Reranker:
    """A saved reranker directory; one without `maple_reranker.json` loads as a Hugging Face MLLM checkpoint (the
    generative kind)."""
    kind = read_manifest(path, RERANKER_MANIFEST).get("kind") or (cfg.kind if cfg else "generative")
    if kind not in RERANKERS:
        raise ValueError(f"{Path(path) / RERANKER_MANIFEST}: unknown reranker kind {kind!r}; "
                         f"known: {sorted(RERANKERS)}")
    return RERANKERS[kind].from_pretrained(path, cfg).eval()
