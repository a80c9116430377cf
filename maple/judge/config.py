from typing import Literal

from maple.section import Section


class JudgeConfig(Section):
    """The MLLM judge that scores (query, candidate) pairs with P(Yes)."""

    backend: Literal["reference", "hf", "vllm"] = "reference"
    model: str | None = None  # name or path of the judge checkpoint (hf, vllm)
    tensor_parallel_size: int = 1
    gpus_per_actor: float = 0.0
    num_actors: int = 1
    batch_size: int = 32
    max_model_len: int = 2048
    noise_flip_rate: float = 0.0  # reference backend only: probability of replacing a score by 1 - score
    noise_std: float = 0.0  # reference backend only: Gaussian noise on scores, clipped to [0, 1]


class MineConfig(Section):
    """Global retrieval + mining (UniME-V2 rules; ARCHITECTURE.md "Mining")."""

    input: str | None = None  # pairs Parquet folder; None: <run.output_dir>/world/train
    output: str | None = None  # None: <run.output_dir>/mined
    directions: list[Literal["t2i", "i2t"]] = ["t2i", "i2t"]
    top_k: int = 50
    num_hard_negatives: int = 8
    beta: float = 0.01
    cyclical_step: int = 5
    index: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
    exact_max_candidates: int = 100_000
    embed_batch_size: int = 64
    embed_concurrency: int = 1
