"""Turn embedded evaluation splits into the metrics report (pure: arrays in, a flat dict out) and into Markdown."""

from __future__ import annotations

import numpy as np

from maple.eval.metrics import compositional_scores, modality_gap, retrieval_metrics, similarity_separation


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)


def retrieval_report(image_ids: list[str], image_emb: np.ndarray, text_image_ids: list[str], text_emb: np.ndarray,
                     ks: list[int]) -> dict[str, float]:
    """image_emb: (I, D) for `image_ids`; text_emb: (T, D), caption t describing image `text_image_ids[t]`."""
    index = {i: n for n, i in enumerate(image_ids)}
    text_to_image = np.array([index[i] for i in text_image_ids])
    out = retrieval_metrics(image_emb, text_emb, text_to_image, ks)
    out["modality_gap"] = modality_gap(image_emb, text_emb)
    out.update(similarity_separation(image_emb, text_emb, text_to_image))
    return out


def compositional_report(negative_types: list[str], held_out: np.ndarray, image_emb: np.ndarray,
                         caption_emb: np.ndarray, negative_caption_emb: np.ndarray,
                         negative_image_emb: np.ndarray) -> dict[str, float]:
    """Accuracy per negative type (all rows and held-out combinations only), Winoground text/image/group scores where
    the negative caption's image exists (NaN rows of `negative_image_emb` mark where it does not)."""
    scores = compositional_scores(
        _dot(image_emb, caption_emb), _dot(image_emb, negative_caption_emb),
        _dot(negative_image_emb, caption_emb), _dot(negative_image_emb, negative_caption_emb))
    return compositional_breakdown(scores, negative_types, held_out, "comp")


def compositional_breakdown(scores: dict[str, np.ndarray], negative_types: list[str], held_out: np.ndarray,
                            prefix: str) -> dict[str, float]:
    """Per-row `compositional_scores` -> `<prefix>_{all|held_out}_accuracy`, and per negative type
    `<prefix>_{subset}_{type}_accuracy` plus the Winoground `_text` / `_image` / `_group` scores where any row of the
    type has the negative caption's image (NaN rows skipped)."""
    types = np.asarray(negative_types)
    held_out = np.asarray(held_out, dtype=bool)
    out: dict[str, float] = {}
    for name, subset in (("all", np.ones_like(held_out)), ("held_out", held_out)):
        if not subset.any():
            continue
        out[f"{prefix}_{name}_accuracy"] = float(scores["accuracy"][subset].mean())
        for t in sorted(set(types[subset])):
            rows = subset & (types == t)
            out[f"{prefix}_{name}_{t}_accuracy"] = float(scores["accuracy"][rows].mean())
            for kind in ("text", "image", "group"):
                values = scores[kind][rows]
                if not np.isnan(values).all():
                    out[f"{prefix}_{name}_{t}_{kind}"] = float(np.nanmean(values))
    return out


def to_markdown(metrics: dict[str, float], title: str) -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
