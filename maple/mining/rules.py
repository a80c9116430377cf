"""Hard-negative mining rules of UniME-V2 (arXiv 2510.13515, Sec. "MLLM-as-a-Judge for Hard Negatives Mining") and
MAPLE's preference ranking (arXiv 2506.06970). Plain numpy functions; no Ray.

For one query q with positive c+ and K globally retrieved candidates c_1..c_K, the judge gives P(Yes) scores s_i and
s(q, c+). Then:

1. False-negative filter (UniME-V2): c_i is a false negative, and dropped, if  s_i > s(q, c+) − β  (β = 0.01).
2. Diverse hard negatives (UniME-V2 "cyclical sampling"): from the survivors ordered by score, take every `step`-th
   (step = 5) until k (= 8) are chosen; where fewer than k survive, repeat them; where none survive, draw at random,
   mark the row (`fallback`) and score the drawn negatives 1.0, as the paper does (`fallback_score`).
3. Every candidate's score is kept beside the negatives: the soft labels (UniME-V2) and MAPLE's rankings
   (`preference_ranking`, over every judged candidate and the positive) use them.

Missing judge scores. A score is NaN when the judge's output lacked the Yes/No logits (Arrow null on disk). A NaN
candidate score is neither a survivor nor a false negative: it cannot be ordered, and it cannot be shown to match the
query. A NaN positive score leaves the threshold unknown, so no candidate of that row survives or is a false negative.

The paper states the rules but its released code ships only the mined data, not the sampler; the exact cyclical
order and the fallbacks below are our reading of the paper, fixed here so that they can be tested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np


def false_negative_mask(candidate_scores, positive_scores, beta: float = 0.01) -> np.ndarray:
    """UniME-V2's false-negative rule: True where s_ij > s_pos_i − β (the candidate is dropped).

    candidate_scores: (N, K) float, judge P(Yes) of each query–candidate pair, NaN where missing.
    positive_scores: (N,) float, judge P(Yes) of each query–positive pair, NaN where missing.
    Returns (N, K) bool. NaN on either side gives False: a missing score is not evidence of a match (see the module
    docstring; such candidates are not survivors either).
    """
    scores = np.asarray(candidate_scores, dtype=np.float64)
    positive = np.asarray(positive_scores, dtype=np.float64)
    if scores.ndim != 2 or positive.shape != scores.shape[:1]:
        raise ValueError(
            f"false_negative_mask: candidate_scores must be (N, K) and positive_scores (N,), "
            f"got {scores.shape} and {positive.shape}"
        )
    known = np.isfinite(scores) & np.isfinite(positive)[:, None]
    with np.errstate(invalid="ignore"):  # NaN comparisons are masked by `known` below
        above = scores > (positive[:, None] - beta)
    return above & known


def cyclical_order(n: int, step: int = 5) -> np.ndarray:
    """The visiting order of cyclical sampling over n ranked items: a permutation of range(n).

    Positions 0, step, 2·step, ... (< n), then offset 1: 1, 1+step, ..., then offset 2, ..., up to offset step−1.
    Example, n = 12, step = 5: [0, 5, 10, 1, 6, 11, 2, 7, 3, 8, 4, 9].
    """
    if n < 0 or step < 1:
        raise ValueError(f"cyclical_order: need n >= 0 and step >= 1, got n={n}, step={step}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(offset, n, step) for offset in range(min(step, n))]).astype(np.int64)


def cyclical_sample(order_indices, k: int, step: int = 5) -> np.ndarray:
    """UniME-V2's cyclical sampling: k items from survivors ranked by judge score, spread over the ranking.

    order_indices: (n,) int, the survivors' candidate indices, best score first.
    Returns (k,) int64 candidate indices: order_indices taken at `cyclical_order(n, step)` positions (every step-th
    from the top, then the same from offsets 1, 2, ...), first k of them. Where n < k the whole cyclical order is
    repeated until k are taken (n = 3, k = 8, step = 5: positions 0, 1, 2, 0, 1, 2, 0, 1).
    """
    order = np.asarray(order_indices, dtype=np.int64)
    if order.ndim != 1:
        raise ValueError(f"cyclical_sample: order_indices must be 1-D, got shape {order.shape}")
    if k < 0:
        raise ValueError(f"cyclical_sample: k must be >= 0, got {k}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if order.size == 0:
        raise ValueError("cyclical_sample: no survivors to sample from; mine_hard_negatives falls back to random")
    positions = cyclical_order(order.size, step)
    repeats = -(-k // order.size)  # ceil
    return order[np.tile(positions, repeats)[:k]]


def preference_ranking(candidate_scores) -> np.ndarray:
    """MAPLE's preference ranking r_0, r_1, ...: candidate indices by judge score, best first.

    candidate_scores: (K,) float, NaN where the judge gave no score.
    Returns (K',) int64 with K' = number of finite scores: NaN candidates are excluded (they have no place in an
    ordering). Ties keep the retrieval order (stable sort), so the ranking is deterministic.
    """
    scores = np.asarray(candidate_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"preference_ranking: candidate_scores must be (K,), got shape {scores.shape}")
    finite = np.flatnonzero(np.isfinite(scores))
    return finite[np.argsort(-scores[finite], kind="stable")].astype(np.int64)


@dataclass(frozen=True)
class MinedRow:
    """The mining result for one query (the JUDGED_SCHEMA fields that mining fills).

    hard_negative_indices: (k,) int64 positions in the candidate list.
    hard_negative_ids: the candidates' ids at those positions.
    hard_negative_scores: (k,) float64 judge scores; `fallback_score` each when `fallback` (see `mine_hard_negatives`).
    num_false_negatives: candidates dropped by the false-negative rule (the positive's own id is not counted).
    repeated: fewer than k distinct negatives were available, so some appear more than once.
    fallback: no candidate survived the filter; the negatives were drawn at random.
    judge_missing: candidates whose judge score is NaN.
    """

    hard_negative_indices: np.ndarray
    hard_negative_ids: list[str]
    hard_negative_scores: np.ndarray
    num_false_negatives: int
    repeated: bool
    fallback: bool
    judge_missing: int


def mine_hard_negatives(
    candidate_ids: Sequence[str],
    candidate_scores,
    positive_score: float | None,
    positive_ids: str | Collection[str],
    *,
    k: int = 8,
    beta: float = 0.01,
    step: int = 5,
    rng: np.random.Generator | int | None = None,
    fallback_score: float | None = 1.0,
) -> MinedRow:
    """UniME-V2 hard negatives for one query.

    candidate_ids: (K,) ids of the retrieved candidates (the positive may be among them).
    candidate_scores: (K,) judge P(Yes), NaN or None where missing.
    positive_score: judge P(Yes) of (q, c+), NaN or None where missing.
    positive_ids: the positive's id, or every id that is a positive for this query (e.g. all captions of the query
        image); these are never negatives and never counted as false negatives.
    rng: only used by the fallback draws; pass a Generator or a seed for reproducible rows.

    Rules, in order:
    - survivors: candidates with a finite score s_i <= s_pos − β, not a positive id. If any: `cyclical_sample` over
      them ranked by score (desc, ties in retrieval order); `repeated` when fewer than k survive.
    - no survivor: `fallback=True`; draw k at random (without replacement while possible, then repeating a random
      permutation, `repeated`) from the non-positive candidates that are not false negatives (NaN scores, or every
      candidate when the positive's score is missing); if there are none, from all non-positive candidates. The
      drawn candidates are either unscored or judged matches, never judged non-matches: their scores are reported as
      `fallback_score`, 1.0 as in the UniME-V2 paper (the soft labels then pull them toward the positive, never push
      them away on an invented score); `fallback_score=None` reports NaN, which leaves them out of every score-based
      term (the real scores remain in the row's candidate_scores).
    Raises ValueError when no candidate other than the positive exists (nothing can be a negative).
    """
    ids = list(candidate_ids)
    scores = np.asarray([np.nan if s is None else s for s in candidate_scores], dtype=np.float64)
    if scores.shape != (len(ids),):
        raise ValueError(
            f"mine_hard_negatives: {len(ids)} candidate ids but candidate_scores has shape {scores.shape}"
        )
    if k < 0:
        raise ValueError(f"mine_hard_negatives: k must be >= 0, got {k}")
    positives = {positive_ids} if isinstance(positive_ids, str) else set(positive_ids)
    is_positive = np.array([cid in positives for cid in ids], dtype=bool)
    pos_score = np.nan if positive_score is None else float(positive_score)

    false_neg = false_negative_mask(scores[None, :], np.array([pos_score]), beta)[0] & ~is_positive
    judged = np.isfinite(scores) & np.isfinite(pos_score)
    survivors = np.flatnonzero(judged & ~false_neg & ~is_positive)
    judge_missing = int(np.count_nonzero(~np.isfinite(scores)))

    if survivors.size:
        ranked = survivors[np.argsort(-scores[survivors], kind="stable")]
        picks = cyclical_sample(ranked, k, step)
        picked_scores = scores[picks]
        repeated, fallback = ranked.size < k, False
    else:
        pool = np.flatnonzero(~false_neg & ~is_positive)
        if pool.size == 0:
            pool = np.flatnonzero(~is_positive)
        if pool.size == 0:
            raise ValueError(
                f"mine_hard_negatives: no candidate other than the positive {sorted(positives)} among {ids}; "
                "retrieve more candidates (mine.top_k) or quarantine this row"
            )
        picks = _random_draw(pool, k, np.random.default_rng(rng))
        picked_scores = np.full(k, np.nan if fallback_score is None else float(fallback_score))
        repeated, fallback = pool.size < k, True

    return MinedRow(
        hard_negative_indices=picks.astype(np.int64),
        hard_negative_ids=[ids[i] for i in picks],
        hard_negative_scores=picked_scores,
        num_false_negatives=int(np.count_nonzero(false_neg)),
        repeated=bool(repeated and k > 0),
        fallback=bool(fallback and k > 0),
        judge_missing=judge_missing,
    )


def _random_draw(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k items of `pool`, without replacement while possible, then a random permutation of it repeated."""
    if pool.size >= k:
        return rng.choice(pool, size=k, replace=False)
    repeats = -(-k // pool.size)
    return np.tile(rng.permutation(pool), repeats)[:k]


def row_seed(seed: int, row_id: str) -> np.random.SeedSequence:
    """A seed that depends only on (seed, row id): fallback draws do not change with batching or re-runs."""
    digest = hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest, "little")])


def mine_batch(
    row_ids: Sequence[str],
    candidate_ids: Sequence[Sequence[str]],
    candidate_scores: Sequence[Sequence[float | None]],
    positive_ids: Sequence[str | Collection[str]],
    positive_scores: Sequence[float | None],
    *,
    k: int = 8,
    beta: float = 0.01,
    step: int = 5,
    seed: int = 0,
    fallback_score: float | None = 1.0,
) -> dict[str, list]:
    """`mine_hard_negatives` over a batch of N rows (e.g. one Ray Data batch), as columns.

    row_ids: (N,) the JUDGED_SCHEMA `id` of each row; with `seed` it seeds that row's fallback draw.
    candidate_ids / candidate_scores: N lists (lengths may differ per row); scores NaN or None where missing.
    positive_ids: (N,) each row's positive id, or a collection of its positive ids.
    positive_scores: (N,) NaN or None where missing.

    Returns columns of length N: `hard_negative_ids`, `hard_negative_scores` (None where unknown, so that Parquet
    stores null as for candidate_scores), `num_false_negatives`, `repeated`, `fallback`, `judge_missing` (the
    JUDGED_SCHEMA fields), `hard_negative_indices` (positions in each row's candidate list, to fetch the negatives'
    content), and `mining_error`: None, or why the row could not be mined (the stage quarantines it; its other
    columns are then empty/zero).
    """
    n = len(row_ids)
    for name, column in (
        ("candidate_ids", candidate_ids),
        ("candidate_scores", candidate_scores),
        ("positive_ids", positive_ids),
        ("positive_scores", positive_scores),
    ):
        if len(column) != n:
            raise ValueError(f"mine_batch: {n} row_ids but {len(column)} {name}")
    out: dict[str, list] = {
        "hard_negative_ids": [],
        "hard_negative_scores": [],
        "hard_negative_indices": [],
        "num_false_negatives": [],
        "repeated": [],
        "fallback": [],
        "judge_missing": [],
        "mining_error": [],
    }
    for i in range(n):
        try:
            row = mine_hard_negatives(
                candidate_ids[i],
                candidate_scores[i],
                positive_scores[i],
                positive_ids[i],
                k=k,
                beta=beta,
                step=step,
                rng=np.random.default_rng(row_seed(seed, str(row_ids[i]))),
                fallback_score=fallback_score,
            )
        except ValueError as error:
            out["hard_negative_ids"].append([])
            out["hard_negative_scores"].append([])
            out["hard_negative_indices"].append([])
            out["num_false_negatives"].append(0)
            out["repeated"].append(False)
            out["fallback"].append(False)
            out["judge_missing"].append(0)
            out["mining_error"].append(f"row {row_ids[i]}: {error}")
            continue
        out["hard_negative_ids"].append(row.hard_negative_ids)
        out["hard_negative_scores"].append([float(s) if np.isfinite(s) else None for s in row.hard_negative_scores])
        out["hard_negative_indices"].append(row.hard_negative_indices.tolist())
        out["num_false_negatives"].append(row.num_false_negatives)
        out["repeated"].append(row.repeated)
        out["fallback"].append(row.fallback)
        out["judge_missing"].append(row.judge_missing)
        out["mining_error"].append(None)
    return out
