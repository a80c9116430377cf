"""Quarantine files: the rows a stage could not use, with the reason, beside the stage's output.

Layout: `<out_dir>/quarantine/<shard>.parquet` in QUARANTINE_SCHEMA, one file per input shard, so a re-run that
redoes a shard overwrites that shard's quarantine instead of appending duplicates. A shard with no bad row still
gets an (empty) file: it records that the shard was checked. No Ray import: a Ray Dataset is recognised by its
`iter_batches` and streamed batch by batch.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from maple.data.files import atomic_path
from maple.data.schema import QUARANTINE_SCHEMA

QUARANTINE_DIR = "quarantine"


def quarantine_path(out_dir: str | Path, shard_name: str) -> Path:
    name = shard_name[: -len(".parquet")] if shard_name.endswith(".parquet") else shard_name
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        raise ValueError(f"shard_name {shard_name!r} must be a plain file name (e.g. the input shard's stem)")
    return Path(out_dir) / QUARANTINE_DIR / f"{name}.parquet"


def _tables(rows_or_dataset: Any):
    """Yield QUARANTINE_SCHEMA tables from a Ray Dataset, an Arrow table, a column dict or a list of row dicts."""
    if hasattr(rows_or_dataset, "iter_batches"):  # a ray.data.Dataset
        for batch in rows_or_dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            yield batch.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
    elif isinstance(rows_or_dataset, pa.Table):
        yield rows_or_dataset.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
    elif isinstance(rows_or_dataset, dict):
        yield pa.Table.from_pydict({k: list(rows_or_dataset[k]) for k in QUARANTINE_SCHEMA.names},
                                   schema=QUARANTINE_SCHEMA)
    else:
        yield pa.Table.from_pylist(list(rows_or_dataset), schema=QUARANTINE_SCHEMA)


def write_quarantine(rows_or_dataset: Any, out_dir: str | Path, shard_name: str) -> Path:
    """Write quarantine rows to `<out_dir>/quarantine/<shard_name>.parquet`; return the path.

    rows_or_dataset: a Ray Dataset of QUARANTINE_SCHEMA rows (streamed), a pyarrow Table, a column dict as
    returned by `validate_pairs`, or a list of row dicts. The file appears atomically (written aside, then renamed),
    so a crashed write never leaves a half shard that a resume would take as finished.
    """
    path = quarantine_path(out_dir, shard_name)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, QUARANTINE_SCHEMA) as writer:
        for table in _tables(rows_or_dataset):
            if table.num_rows:
                writer.write_table(table)
    return path


def quarantine_counts(out_dir: str | Path) -> dict[str, int]:
    """{reason: number of quarantined rows} over every shard in `<out_dir>/quarantine/`, most frequent first."""
    folder = Path(out_dir) / QUARANTINE_DIR
    counts: Counter[str] = Counter()
    for path in sorted(folder.glob("*.parquet")):
        counts.update(pq.read_table(path, columns=["reason"])["reason"].to_pylist())
    return dict(counts.most_common())
