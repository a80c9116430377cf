"""A run's pairs split into train / val / test: which split a pair belongs to, and the writer of the split folders
(`maple data import`, jobs/import_data.py).

A pair's split is a function of its id alone (blake2b), so importing the same data again, or more of it, never moves a
pair between splits: what was held out stays held out. No Ray here: `maple.stages.read.import_pairs` feeds the
writer from the validated stream.

Layout, the one `maple data synth` writes and every later job reads by default:
    <out>/train/part-00000.parquet ...   PAIRS_SCHEMA, `shard_rows` pairs per shard (mining's unit of resume)
    <out>/val/..., <out>/test/...
    <out>/quarantine/<name>.parquet      QUARANTINE_SCHEMA: every row not written, with the reason
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from maple.data.files import check_replaceable, discard, publish, temporary_path
from maple.data.quarantine import write_quarantine
from maple.data.schema import PAIRS_SCHEMA, QUARANTINE_SCHEMA

SPLITS = ("train", "val", "test")


def split_of(pair_id: str, val_fraction: float, test_fraction: float) -> str:
    """"test" for a `test_fraction` share of ids, "val" for a `val_fraction` share, else "train" (by the id's
    blake2b hash read as a number in [0, 1))."""
    u = int.from_bytes(hashlib.blake2b(pair_id.encode("utf-8"), digest_size=8).digest(), "little") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def is_val(row_id: str, fraction: float) -> bool:
    """A fixed share of the rows (mined rows: the reranker's validation share), by a hash of the id: the same rows on
    every worker, every run."""
    return zlib.crc32(str(row_id).encode()) % 10_000 < fraction * 10_000


def split_rows(batch: pa.Table, fraction: float, val: bool) -> pa.Table:
    """The batch's validation (or training) rows. In Arrow, so the schema stays: a row-wise filter re-infers the
    types, and a column that is null throughout the batch (positive_image in image-to-text rows) comes back
    mistyped."""
    keep = [is_val(row_id, fraction) == val for row_id in batch["id"].to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_()))


class SplitWriter:
    """Good pairs (PAIRS_SCHEMA tables) into `<out>/<split>/part-NNNNN.parquet`, `shard_rows` per shard, and the
    quarantine into `<out>/quarantine/<quarantine_name>.parquet`.

    Each split folder is written aside and moved into place by `close()` (with the other splits written: a failed
    import leaves the previous ones as they were); `splits` names the folders this import replaces, written even
    when no pair lands in one (a shard without rows keeps the schema). An id seen before in this import is
    quarantined as `duplicate_id` (validation sees one batch at a time; this sees the whole input)."""

    def __init__(self, out: str | Path, splits: tuple[str, ...], shard_rows: int, quarantine_name: str):
        self.out, self.splits, self.shard_rows, self.quarantine_name = Path(out), splits, shard_rows, quarantine_name
        for s in splits:
            check_replaceable(self.out / s)  # before the work, not after it
        self.tmp = {s: temporary_path(self.out / s) for s in splits}
        for tmp in self.tmp.values():
            discard(tmp)
            tmp.mkdir(parents=True)
        self.pending: dict[str, list[pa.Table]] = {s: [] for s in splits}
        self.shards = dict.fromkeys(splits, 0)
        self.rows = dict.fromkeys(splits, 0)
        self.quarantine: list[pa.Table] = []
        self.seen: set[str] = set()

    def add(self, pairs: pa.Table, split: str | list[str]) -> None:
        """Pairs (PAIRS_SCHEMA) to `split`, or row by row to the splits listed."""
        splits = [split] * pairs.num_rows if isinstance(split, str) else split
        ids = pairs["id"].to_pylist()
        duplicate = []
        for i in ids:
            duplicate.append(i in self.seen)
            self.seen.add(i)
        if any(duplicate):
            sources = pairs["source"].to_pylist()
            self.quarantine_rows([{"id": i, "source": s, "stage": "import", "reason": "duplicate_id",
                                   "row": json.dumps({"id": i, "source": s, "detail": "an earlier pair of this "
                                                      "import has this id; the first one is kept"})}
                                  for i, s, d in zip(ids, sources, duplicate) if d])
        for name in self.splits:
            keep = pa.array([s == name and not d for s, d in zip(splits, duplicate)], pa.bool_())
            part = pairs.filter(keep)
            if part.num_rows:
                self.pending[name].append(part)
                self.rows[name] += part.num_rows
                while sum(t.num_rows for t in self.pending[name]) >= self.shard_rows:
                    self._flush(name, self.shard_rows)

    def quarantine_rows(self, rows: pa.Table | list[dict]) -> None:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
        self.quarantine.append(table.cast(QUARANTINE_SCHEMA))

    def _flush(self, split: str, n: int | None = None) -> None:
        table = pa.concat_tables(self.pending[split]) if self.pending[split] else PAIRS_SCHEMA.empty_table()
        n = table.num_rows if n is None else n
        pq.write_table(table.slice(0, n), self.tmp[split] / f"part-{self.shards[split]:05d}.parquet")
        self.pending[split] = [table.slice(n)] if table.num_rows > n else []
        self.shards[split] += 1

    def close(self) -> dict:
        """Write the last shards and the quarantine, move the split folders into place; returns the counts."""
        for split in self.splits:
            if self.pending[split] or not self.shards[split]:
                self._flush(split)
        quarantine = pa.concat_tables(self.quarantine) if self.quarantine else QUARANTINE_SCHEMA.empty_table()
        path = write_quarantine(quarantine, self.out, self.quarantine_name)
        for split in self.splits:
            publish(self.tmp[split], self.out / split)
        reasons = quarantine["reason"].value_counts().to_pylist()
        return {"splits": dict(self.rows), "quarantined": quarantine.num_rows, "quarantine": str(path),
                "reasons": {r["values"]: r["counts"] for r in sorted(reasons, key=lambda r: -r["counts"])}}

    def discard(self) -> None:
        for tmp in self.tmp.values():
            discard(tmp)
