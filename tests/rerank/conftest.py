"""Fixtures of the reranker tests."""

from __future__ import annotations

import pyarrow as pa
import pytest

from judged_rows import judged_rows_from_world


@pytest.fixture(scope="session")
def judged_table(small_world) -> pa.Table:
    """12 train queries in both directions, 4 hard negatives each."""
    world_dir, _ = small_world
    return judged_rows_from_world(world_dir / "train", 12, k=4)
