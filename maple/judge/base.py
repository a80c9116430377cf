"""The one judge interface: `JudgeBackend.score(pairs) -> (N,) float32 P(Yes)`, NaN where the judge gave no
Yes/No logits (never an invented score). Backends (`maple.judge.backends` builds them): `reference` (the synthetic
world's ground truth, experiments and tests only), `hf` (transformers, one forward pass per batch), `vllm` (vLLM
engine). No Ray import.

A batch of pairs is a dict of equal-length columns (`PAIR_COLUMNS`); a side is text, an image (encoded bytes), or
both. `query_annotation` / `candidate_annotation` carry the synthetic world's scene JSON of an image side (the
reference judge reads it; real data leaves it None). Ids name the pair in errors and seed the reference noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

PAIR_COLUMNS = ("query_id", "query_text", "query_image", "query_annotation",
                "candidate_id", "candidate_text", "candidate_image", "candidate_annotation")

Pairs = dict[str, Sequence[Any]]


def make_pairs(rows: Sequence[dict[str, Any]]) -> Pairs:
    """Row dicts (missing keys = None) -> the column dict every backend reads."""
    return {c: [r.get(c) for r in rows] for c in PAIR_COLUMNS}


def num_pairs(pairs: Pairs) -> int:
    lengths = {len(pairs[c]) for c in PAIR_COLUMNS if c in pairs}
    if len(lengths) != 1:
        raise ValueError(f"judge pairs: columns have different lengths {sorted(lengths)}")
    return lengths.pop()


class JudgeBackend(ABC):
    """Scores (query, candidate) pairs. Subclasses load their model in `__init__` (once per actor)."""

    name: str = ""
    sees_images: bool = False  # whether the model reads image sides (an MLLM); the reference reads annotations

    @abstractmethod
    def score(self, pairs: Pairs) -> np.ndarray:
        """pairs: PAIR_COLUMNS, N rows -> (N,) float32 P(Yes) = softmax([logit_Yes, logit_No])[0]; NaN where the
        judge output lacked the two logits (e.g. a prompt longer than judge.max_model_len)."""
