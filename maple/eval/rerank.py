"""Retrieve-then-rerank (UniME-V2, arXiv 2510.13515, "retrieve-then-rerank"): the embedder retrieves the top k
candidates of each query, the reranker reorders them. Two modes:

- `full`: the top k sorted by reranker score (ties keep the embedder's order);
- `best_of`: UniME-V2's released evaluation: the reranker picks the best of the embedder's top m (m = 5) and moves it
  to the first place; every other candidate keeps the embedder's order.

The ordering rules and the metrics over them are plain functions over arrays and a score function (any
`Reranker.score`): no model, no Ray. `maple.stages.evaluate.evaluate_with_reranker` runs a reranker through them over
the evaluation splits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from maple.eval.metrics import compositional_scores, recall_at_k
from maple.eval.report import compositional_breakdown

MODES = ("full", "best_of")


# --- the ordering rules (pure) --------------------------------------------------------------------------------------


def top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """The embedder's top k candidates per query, best first: (Q, min(k, C)) int indices into the C candidates.

    sim: (Q, C) float. Ties go to the lower candidate index (stable), as in `recall_at_k`.
    """
    order = np.argsort(-np.asarray(sim), axis=1, kind="stable")
    return order[:, :k]


def full_reorder(rerank_scores: np.ndarray) -> np.ndarray:
    """`full` mode: the permutation of the top-k slots by reranker score, best first.

    rerank_scores: (Q, k) float, the reranker's score of each query's top-k candidates in the embedder's order.
    Returns (Q, k) int: row q lists slots 0..k−1 in their new order. Ties keep the embedder's order.
    """
    return np.argsort(-np.asarray(rerank_scores), axis=1, kind="stable")


def best_of_reorder(rerank_scores: np.ndarray, m: int = 5) -> np.ndarray:
    """`best_of` mode (UniME-V2): the reranker's best among the first m slots moves to slot 0; the others keep
    the embedder's order. Only the first m scores are read (the caller may leave the rest NaN).

    rerank_scores: (Q, k) float. Returns (Q, k) int, a permutation of 0..k−1 per row.
    """
    scores = np.asarray(rerank_scores)
    q, k = scores.shape
    m = min(m, k)
    best = np.argmax(scores[:, :m], axis=1)  # first maximum on ties: the embedder's better one
    perm = np.empty((q, k), dtype=np.int64)
    for row in range(q):
        rest = [s for s in range(k) if s != best[row]]
        perm[row] = [best[row], *rest]
    return perm


def reranked_scores(sim: np.ndarray, topk: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """A (Q, C) score matrix whose ranking is the reranked top k (in `perm` order) followed by every other candidate
    in the embedder's order, so the usual `recall_at_k` reads the reranked list.

    sim: (Q, C); topk: (Q, k) candidate indices; perm: (Q, k) slot permutation from `full_reorder`/`best_of_reorder`.
    """
    sim = np.asarray(sim, dtype=np.float64)
    out = sim.copy()
    k = topk.shape[1]
    # Above every similarity: the reranked slots come first, in perm order.
    base = np.nanmax(sim) + 1.0 + k
    reordered = np.take_along_axis(topk, perm, axis=1)
    np.put_along_axis(out, reordered, base - np.arange(k, dtype=np.float64)[None, :], axis=1)
    return out


def rerank_recall(sim: np.ndarray, relevant: np.ndarray, topk: np.ndarray, rerank_scores: np.ndarray,
                  ks: list[int] | tuple[int, ...], mode: str, m: int = 5) -> dict[int, float]:
    """Recall@K after reranking the top k in `mode` ("full" | "best_of"). sim, relevant: (Q, C); topk, rerank_scores:
    (Q, k). Recall at K beyond k is the embedder's (the tail is not reordered)."""
    if mode == "full":
        perm = full_reorder(rerank_scores)
    elif mode == "best_of":
        perm = best_of_reorder(rerank_scores, m)
    else:
        raise ValueError(f"unknown rerank mode {mode!r}; use one of {MODES}")
    return recall_at_k(reranked_scores(sim, topk, perm), relevant, ks)


# --- running a reranker over the evaluation splits -------------------------------------------------------------------

ScoreFn = Callable[[object, list], list[float]]  # (query, candidates) -> scores: `Reranker.score`


def score_top_k(score: ScoreFn, queries: list, candidates: list, topk: np.ndarray, upto: int | None = None
                ) -> np.ndarray:
    """Reranker scores of each query's top-k candidates: (Q, k) float; slots at or beyond `upto` are NaN (unscored)."""
    q, k = topk.shape
    upto = k if upto is None else min(upto, k)
    out = np.full((q, k), np.nan)
    for row in range(q):
        out[row, :upto] = score(queries[row], [candidates[j] for j in topk[row, :upto]])
    return out


def rerank_report(score: ScoreFn, images: list, image_emb: np.ndarray, captions: list[str],
                  text_to_image: np.ndarray, text_emb: np.ndarray, ks: list[int], top_k_size: int = 10,
                  m: int = 5) -> dict[str, float]:
    """Recall@K both ways, embedder alone and reranked in both modes: keys `rerank_{mode}_{t2i|i2t}_r@K`.

    images: I PIL images with image_emb (I, D); captions: T texts with text_emb (T, D), caption t describing image
    text_to_image[t]. Each reranked query scores its top `top_k_size` candidates once; both modes read those scores.
    """
    text_to_image = np.asarray(text_to_image)
    sim = np.asarray(text_emb) @ np.asarray(image_emb).T  # (T, I)
    relevant = text_to_image[:, None] == np.arange(len(images))[None, :]
    out: dict[str, float] = {}
    for direction, s, rel, queries, cands in (("t2i", sim, relevant, captions, images),
                                             ("i2t", sim.T, relevant.T, images, captions)):
        topk = top_k(s, top_k_size)
        scores = score_top_k(score, queries, cands, topk)
        for mode in MODES:
            for k, v in rerank_recall(s, rel, topk, scores, ks, mode, m).items():
                out[f"rerank_{mode}_{direction}_r@{k}"] = v
        out[f"rerank_{direction}_top{topk.shape[1]}_hit"] = float(np.take_along_axis(rel, topk, axis=1).any(1).mean())
    for mode in MODES:
        if f"rerank_{mode}_t2i_r@1" in out:
            out[f"rerank_{mode}_mean_r@1"] = (out[f"rerank_{mode}_t2i_r@1"] + out[f"rerank_{mode}_i2t_r@1"]) / 2
    return out


def compositional_rerank_report(score: ScoreFn, images: list, captions: list[str], negative_captions: list[str],
                                negative_images: list, negative_types: list[str], held_out: np.ndarray
                                ) -> dict[str, float]:
    """The compositional test judged by the reranker: keys `rerank_comp_{all|held_out}[_{type}]_accuracy` (and
    Winoground `_text/_image/_group` where the negative caption's image exists; None in `negative_images` where not).

    Each image's candidates are its caption and the negative caption; with k ≥ 2 the embedder's top k holds both, so
    retrieve-then-rerank (either mode) ranks them by the reranker's scores alone.
    """
    n = len(images)
    s00, s01 = np.empty(n), np.empty(n)
    s10, s11 = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        s00[i], s01[i] = score(images[i], [captions[i], negative_captions[i]])
        if negative_images[i] is not None:
            s10[i], s11[i] = score(negative_images[i], [captions[i], negative_captions[i]])
    return compositional_breakdown(compositional_scores(s00, s01, s10, s11), negative_types, held_out, "rerank_comp")
