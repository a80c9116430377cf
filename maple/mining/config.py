from typing import Literal

from maple.section import Section


class MineConfig(Section):
    """Global retrieval + mining (UniME-V2 rules; ARCHITECTURE.md "Mining"); read by `maple.stages.mining`."""

    input: str | None = None  # pairs Parquet folder; None: <run.output_dir>/world/train
    output: str | None = None  # None: <run.output_dir>/mined
    model: str | None = None  # the current embedder (a folder or models:/name/version); None: the untrained twin
    directions: list[Literal["t2i", "i2t"]] = ["t2i", "i2t"]
    top_k: int = 50
    num_hard_negatives: int = 8
    beta: float = 0.01
    cyclical_step: int = 5
    index: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
    exact_max_candidates: int = 100_000
    embed_batch_size: int = 64
    embed_concurrency: int = 1
    queries_per_batch: int = 16  # queries per judge task; each brings top_k + 1 pairs, kept together (prefix cache)
    max_actor_restarts: int = 3  # a judge/embed actor whose process dies is restarted and its task retried
    # UniME-V2's δ: retrieved candidates below this cosine similarity are not judged; None: plain top-K
    min_similarity: float | None = None
    # The score reported for a fallback negative (no candidate survived the false-negative filter, so negatives were
    # drawn at random): 1.0 as UniME-V2 has it (the soft labels then treat them like the positive, never as judged
    # non-matches); None reports NaN and leaves them out of every score-based term.
    fallback_score: float | None = 1.0
    ranking_max: int | None = None  # candidates kept in each query's preference ranking (best first); None: all
