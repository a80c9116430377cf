from typing import Literal

from pydantic import Field

from maple.section import Section


class JudgeConfig(Section):
    """The MLLM judge that scores (query, candidate) pairs with P(Yes) (docs/judge.md)."""

    backend: Literal["reference", "hf", "vllm"] = "reference"
    model: str | None = None  # local path (or a name already in the HF cache) of the judge checkpoint (hf, vllm)
    tensor_parallel_size: int = 1
    gpus_per_actor: float = 0.0
    accelerator_type: str | None = None  # only on nodes with this GPU, e.g. "A100" (docs/cluster.md)
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    batch_size: int = 32  # pairs per forward pass (hf) / per engine call (vllm)
    max_model_len: int = 2048  # a prompt longer than this gets no score (NaN, counted in judge_missing)
    dtype: str = "auto"  # judge weights: auto (bf16 on CUDA, else the checkpoint's) | float32 | bfloat16 | float16
    yes_token: str = "Yes"
    no_token: str = "No"
    chat_template: bool = True  # wrap the prompt in the tokenizer's chat template when it has one
    image_placeholder: str | None = None  # None: from the model type (LLaVA "<image>", Qwen2-VL vision tokens)
    enable_prefix_caching: bool = True  # vllm
    enforce_eager: bool = False  # vllm: skip graph compilation (faster start, slower steps; tests, tiny models)
    # reference backend only: ε, each false fact multiplies the score by it (1: the fraction of true facts; small:
    # P(Yes) is "the whole caption holds", as a judge asked yes or no would say; maple/data/synth.py)
    false_fact_factor: float = Field(1.0, ge=0.0, le=1.0)
    noise_flip_rate: float = 0.0  # reference backend only: probability of replacing a score by 1 - score
    noise_std: float = 0.0  # reference backend only: Gaussian noise on scores, clipped to [0, 1]
    noise_seed: int = 0  # reference backend only: the noise is a function of (seed, query id, candidate id)
