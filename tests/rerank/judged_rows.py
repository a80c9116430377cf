"""JUDGED_SCHEMA rows built straight from the synthetic world with the reference score (no Ray, no embedder): the
judge's scores are `maple.data.synth.reference_score`, the hard negatives the highest-scored survivors of UniME-V2's
false-negative filter (s_i > s+ − β dropped). For unit tests of the reranker's collation and loss wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maple.data.schema import JUDGED_SCHEMA
from maple.data.synth import Scene, reference_score


def judged_rows_from_world(split_dir: str | Path, n: int, k: int = 4, beta: float = 0.01) -> pa.Table:
    pairs = pq.read_table(split_dir).to_pylist()[: max(n, k + 2)]
    scenes = [Scene.from_json(p["annotation"]) for p in pairs]
    rows = []
    for q, pair in enumerate(pairs[:n]):
        for direction in ("t2i", "i2t"):
            if direction == "t2i":
                caption = pair["captions"][0]
                pos_score = reference_score(caption, scenes[q])
                cands = [(j, reference_score(caption, scenes[j])) for j in range(len(pairs)) if j != q]
            else:
                pos_score = reference_score(pair["captions"][0], scenes[q])
                cands = [(j, reference_score(pairs[j]["captions"][0], scenes[q])) for j in range(len(pairs)) if j != q]
            survivors = sorted([c for c in cands if c[1] <= pos_score - beta], key=lambda c: -c[1])[:k]
            hard = [j for j, _ in survivors]
            rows.append({
                "id": f"{pair['id']}:{direction}", "direction": direction, "query_id": pair["id"],
                "query_text": pair["captions"][0] if direction == "t2i" else None,
                "query_image": pair["image"] if direction == "i2t" else None,
                "positive_id": pair["id"] if direction == "t2i" else f"{pair['id']}#0",
                "positive_text": pair["captions"][0] if direction == "i2t" else None,
                "positive_image": pair["image"] if direction == "t2i" else None,
                "positive_score": pos_score,
                "candidate_ids": [pairs[j]["id"] for j, _ in cands], "candidate_scores": [s for _, s in cands],
                "candidate_sims": [0.0] * len(cands),
                "hard_negative_ids": [pairs[j]["id"] for j in hard],
                "hard_negative_scores": [s for _, s in survivors],
                "hard_negative_texts": [pairs[j]["captions"][0] for j in hard] if direction == "i2t" else None,
                "hard_negative_images": [pairs[j]["image"] for j in hard] if direction == "t2i" else None,
                "num_false_negatives": len(cands) - len([c for c in cands if c[1] <= pos_score - beta]),
                "repeated": False, "fallback": False, "judge_missing": 0,
            })
    return pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA)


def as_numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """The batch format Ray Data's `iter_batches` yields (numpy arrays, object arrays for lists and bytes)."""
    return {name: np.array(table.column(name).to_pylist() + [None], dtype=object)[:-1]
            for name in table.column_names}
