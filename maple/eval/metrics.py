"""Retrieval, compositional and modality-gap metrics: plain functions over arrays, no Ray.

Conventions: embeddings are L2-normalised, so a similarity is a dot product; higher is better.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.stats import wasserstein_distance


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks: list[int] | tuple[int, ...] = (1, 5, 10)
                ) -> dict[int, float]:
    """Fraction of queries with at least one relevant candidate among their top k.

    scores: (Q, C) float, query-candidate similarity. relevant: (Q, C) bool; a query may have several relevant
    candidates (an image and its several captions), and counts as a hit when any of them is in the top k.
    Ties are broken by candidate index (stable sort), never in the query's favour by accident.
    """
    scores, relevant = np.asarray(scores), np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    order = np.argsort(-scores, axis=1, kind="stable")
    hits_sorted = np.take_along_axis(relevant, order, axis=1)
    first_hit = hits_sorted.argmax(axis=1)  # rank of the best-ranked relevant candidate
    return {k: float((first_hit < k).mean()) for k in ks}


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                      ks: list[int] | tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways over a gallery with several captions per image.

    image_emb: (I, D); text_emb: (T, D); text_to_image: (T,) int, the image each caption describes.
    Text→image: each caption retrieves among all images. Image→text: each image retrieves among all captions; any of
    its own captions is a hit.
    """
    text_to_image = np.asarray(text_to_image)
    sim = text_emb @ image_emb.T  # (T, I)
    relevant = text_to_image[:, None] == np.arange(len(image_emb))[None, :]
    t2i = recall_at_k(sim, relevant, ks)
    i2t = recall_at_k(sim.T, relevant.T, ks)
    out = {f"t2i_r@{k}": v for k, v in t2i.items()}
    out.update({f"i2t_r@{k}": v for k, v in i2t.items()})
    out["mean_r@1"] = (out.get("t2i_r@1", 0.0) + out.get("i2t_r@1", 0.0)) / 2 if 1 in ks else float("nan")
    return out


def compositional_scores(s_i0_c0: np.ndarray, s_i0_c1: np.ndarray, s_i1_c0: np.ndarray | None = None,
                         s_i1_c1: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-row correctness on image/caption pairs with a hard negative caption c1 (and, where it exists, the image i1
    that c1 truly describes).

    s_i0_c0, s_i0_c1: (N,) similarity of the image to its caption and to the negative caption.
    `accuracy` (SugarCrepe): s(i0,c0) > s(i0,c1). Where the pair image exists (Winoground, Thrush et al. 2022):
    `text` = s(i0,c0) > s(i0,c1) and s(i1,c1) > s(i1,c0); `image` = s(i0,c0) > s(i1,c0) and s(i1,c1) > s(i0,c1);
    `group` = text and image. Rows without i1 get NaN there.
    """
    out = {"accuracy": (np.asarray(s_i0_c0) > np.asarray(s_i0_c1)).astype(float)}
    if s_i1_c0 is not None and s_i1_c1 is not None:
        a, b, c, d = (np.asarray(x, dtype=float) for x in (s_i0_c0, s_i0_c1, s_i1_c0, s_i1_c1))
        valid = ~(np.isnan(c) | np.isnan(d))
        text = (a > b) & (d > c)
        image = (a > c) & (d > b)
        out["text"] = np.where(valid, text, np.nan)
        out["image"] = np.where(valid, image, np.nan)
        out["group"] = np.where(valid, text & image, np.nan)
    return out


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Euclidean distance between the mean image and the mean text embedding (Liang et al. 2022, "Mind the Gap")."""
    return float(np.linalg.norm(np.asarray(image_emb).mean(0) - np.asarray(text_emb).mean(0)))


def similarity_separation(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray
                          ) -> dict[str, float]:
    """1-Wasserstein distance between the matched and the unmatched image-text similarity distributions, with
    their means: how far apart the model keeps true pairs from the rest."""
    sim = np.asarray(text_emb) @ np.asarray(image_emb).T
    matched = np.asarray(text_to_image)[:, None] == np.arange(sim.shape[1])[None, :]
    pos, neg = sim[matched], sim[~matched]
    return {"w1_matched_unmatched": float(wasserstein_distance(pos, neg)), "matched_mean": float(pos.mean()),
            "unmatched_mean": float(neg.mean())}


def metric_name(key: str) -> str:
    """A metric key as MLflow accepts it (letters, digits and `_-. :/` only): "t2i_r@1" -> "t2i_r_at_1"."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))
