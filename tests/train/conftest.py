"""Rows for the training tests: pairs read from the session's synthetic world, and judged rows built from them the
way the mining job lays them out (JUDGED_SCHEMA)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maple.data.schema import JUDGED_SCHEMA


def numpy_rows(table: pa.Table) -> dict[str, np.ndarray]:
    """A table as Ray Data's numpy batch format: one array per column (lists as object arrays)."""
    return {name: np.array(table.column(name).to_pylist() + [None], dtype=object)[:-1] for name in table.column_names}


def judged_table(pairs: pa.Table, k: int = 3, seed: int = 0) -> pa.Table:
    """One t2i and one i2t row per pair; hard negatives are other pairs' images / captions, scores random in [0, 1)
    with the positive scored highest (one score left null, as the judge sometimes leaves it)."""
    rng = np.random.default_rng(seed)
    rows = pairs.to_pylist()
    out = []
    for i, row in enumerate(rows):
        others = [rows[(i + j + 1) % len(rows)] for j in range(k)]
        scores = sorted(rng.uniform(0, 0.9, k).tolist(), reverse=True)
        common = dict(positive_score=0.95, candidate_ids=[o["id"] for o in others], candidate_scores=scores,
                      candidate_sims=scores, hard_negative_ids=[o["id"] for o in others], num_false_negatives=0,
                      repeated=False, fallback=False, judge_missing=0)
        out.append(dict(common, id=f"{row['id']}#0:t2i", direction="t2i", query_id=f"{row['id']}#0",
                        query_text=row["captions"][0], query_image=None, positive_id=row["id"], positive_text=None,
                        positive_image=row["image"], hard_negative_scores=scores, hard_negative_texts=None,
                        hard_negative_images=[o["image"] for o in others]))
        out.append(dict(common, id=f"{row['id']}:i2t", direction="i2t", query_id=row["id"], query_text=None,
                        query_image=row["image"], positive_id=f"{row['id']}#0", positive_text=row["captions"][0],
                        positive_image=None, hard_negative_scores=[None, *scores[1:]],
                        hard_negative_texts=[o["captions"][0] for o in others], hard_negative_images=None))
    return pa.Table.from_pylist(out, schema=JUDGED_SCHEMA)


@pytest.fixture(scope="session")
def world_pairs(small_world) -> pa.Table:
    world_dir, _ = small_world
    return pq.read_table(world_dir / "train").slice(0, 64)


@pytest.fixture(scope="session")
def world_judged(world_pairs) -> pa.Table:
    return judged_table(world_pairs.slice(0, 32))
