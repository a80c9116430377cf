"""Rerankers (UniME-V2, arXiv 2510.13515): score (query, candidate) pairs jointly, after the embedder's retrieval.

One interface over two kinds:

- `GenerativeReranker`: a multimodal LLM (Qwen2-VL family; a tiny random twin for tests) reads the judge's Yes/No
  prompt for one pair and answers "Yes"/"No", or reads a list prompt and answers "(k)", the slot of the best candidate.
  Its logits at the answer position are read directly (one forward pass, no sampling).
- `CrossEncoderReranker`: the token states of a dual encoder's two towers (CLIP / SigLIP), projected to one width and
  joined by a few self-attention layers over [CLS] + query tokens + candidate tokens (so every query token attends to
  every candidate token); a head on [CLS] gives the [Yes, No] logits.

Both give, for a pair, the [Yes, No] logits (`pair_logits`, what the pairwise loss trains) and, for a list, one logit
per slot (`list_logits`, what the listwise loss trains). `score(query, candidates)` is the no-grad convenience for
evaluation and serving: logit_Yes − logit_No per candidate (the log-odds of P(Yes); higher = more relevant).

A query or candidate is a text (`str`) or an image (`PIL.Image.Image`), in any combination.

The kinds live in `maple.models.cross_encoder` and `maple.models.generative_reranker`; `maple.models.families`
builds and loads them. A saved reranker is a directory: `maple_reranker.json` (kind + settings) beside the weights
(safetensors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
from PIL import Image
from torch import nn

from maple.models.config import ModelConfig, RerankerConfig
from maple.models.manifest import RERANKER_MANIFEST, read_manifest, write_manifest

MANIFEST = RERANKER_MANIFEST
Item = Union[str, Image.Image]


def is_image(item: Item) -> bool:
    return isinstance(item, Image.Image)


class Reranker(nn.Module, ABC):
    """Base of both kinds. Subclasses set `kind` and implement the abstract methods."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def pair_logits(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        """[Yes, No] logits for each pair (queries[i], candidates[i]): (N, 2), differentiable."""

    @abstractmethod
    def list_logits(self, queries: list[Item], candidate_lists: list[list[Item]]) -> torch.Tensor:
        """One logit per slot of each query's candidate list: (N, x+1), differentiable; all lists the same length."""

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        ...

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, cfg: RerankerConfig | None = None) -> "Reranker":
        ...

    def forward(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        return self.pair_logits(queries, candidates)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def score(self, query: Item, candidates: list[Item], batch_size: int = 32) -> list[float]:
        """logit_Yes − logit_No for (query, c) for every candidate, in order; higher = more relevant."""
        return self.score_many([(query, candidates)], batch_size)[0]

    @torch.no_grad()
    def score_many(self, requests: list[tuple[Item, list[Item]]], batch_size: int = 32) -> list[list[float]]:
        """`score` for several (query, candidates) at once: their pairs run through the model together, `batch_size`
        pairs per forward pass, so a server's batch of small requests fills the passes."""
        was_training = self.training
        self.eval()
        pairs = [(query, c) for query, candidates in requests for c in candidates]
        flat: list[float] = []
        for i in range(0, len(pairs), batch_size):
            queries, chunk = zip(*pairs[i:i + batch_size])
            logits = self.pair_logits(list(queries), list(chunk)).float()
            flat.extend((logits[:, 0] - logits[:, 1]).cpu().tolist())
        self.train(was_training)
        out, start = [], 0
        for _, candidates in requests:
            out.append(flat[start:start + len(candidates)])
            start += len(candidates)
        return out

    def _write_manifest(self, path: Path, settings: dict[str, Any]) -> None:
        write_manifest(path, MANIFEST, {"kind": self.kind, **settings})


def reranker_manifest(path: str | Path) -> dict[str, Any]:
    return read_manifest(path, MANIFEST)


def list_size(candidate_lists: list[list[Item]]) -> int:
    sizes = {len(c) for c in candidate_lists}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"list_logits needs non-empty candidate lists of one length; got lengths {sorted(sizes)}")
    return sizes.pop()


def model_config(cfg: RerankerConfig, family: str) -> ModelConfig:
    """The `ModelConfig` of the network a reranker of `cfg` is built on (its towers, or its MLLM)."""
    return ModelConfig(family=family, image_size=cfg.image_size, max_text_tokens=cfg.max_text_tokens, tiny=cfg.tiny,
                       trust_remote_code=cfg.trust_remote_code)
