"""The mining job's output, one pair of files per input shard: the judged rows and the quarantined ones.

A shard's files appear (atomically, by rename) once every one of its query rows has arrived, so a re-run skips
exactly the finished shards and redoes the rest (idempotent resume): no row is lost or duplicated.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maple.data.files import discard, publish, temporary_path
from maple.data.quarantine import quarantine_counts, write_quarantine
from maple.data.schema import JUDGED_SCHEMA, QUARANTINE_SCHEMA

JUDGED_DIR = "judged"
# Columns that travel with a row through the stages besides JUDGED_SCHEMA's; dropped by the writer.
SHARD = "shard"
REASON = "_quarantine_reason"
REWRITE_REJECTS = "_rewrite_rejects"  # JSON {reason, text} per proposal the rewriter could not make into a rewrite
TIMING = ("_retrieve_s", "_judge_s", "_judge_pairs", "_mine_s")
OUTPUT_SCHEMA = pa.schema([*JUDGED_SCHEMA, pa.field(SHARD, pa.string()), pa.field(REASON, pa.string()),
                           pa.field(REWRITE_REJECTS, pa.list_(pa.string())),
                           *(pa.field(t, pa.int64() if t == "_judge_pairs" else pa.float64()) for t in TIMING)])
SCORE_SOURCES = ("positive", "retrieved", "rewritten")


def shard_name(source: str) -> str:
    """The input shard a row came from (its Parquet file's stem): the unit of output and of resume."""
    return Path(str(source)).name.removesuffix(".parquet")


def judged_path(out_dir: str | Path, shard: str) -> Path:
    return Path(out_dir) / JUDGED_DIR / f"{shard}.parquet"


def finished_shards(out_dir: str | Path, shards: list[str]) -> set[str]:
    """Shards whose judged file exists: it is renamed into place only once the whole shard is written."""
    return {s for s in shards if judged_path(out_dir, s).is_file()}


class ShardWriter:
    """Writes the stream of mined rows into `<out>/judged/<shard>.parquet` (JUDGED_SCHEMA) and
    `<out>/quarantine/<shard>.parquet`, one pair of files per input shard.

    `expected`: {shard: number of query rows it will receive}. A shard's files appear (atomically, by rename) when
    all its rows have arrived: quarantine first, then the judged file, which marks the shard finished for a re-run.
    A row id seen twice or a shard left short at `close` is an error: the job must neither lose nor duplicate rows.
    `quarantine`: {shard: QUARANTINE_SCHEMA rows known before the stream (validation, embedding)}.
    """

    def __init__(self, out_dir: str | Path, expected: dict[str, int], quarantine: dict[str, list[dict]]):
        self.out = Path(out_dir)
        (self.out / JUDGED_DIR).mkdir(parents=True, exist_ok=True)
        self.expected = dict(expected)
        self.quarantine = defaultdict(list, {s: list(rows) for s, rows in quarantine.items()})
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.totals: dict[str, float] = defaultdict(float)
        self.scores: dict[str, list[np.ndarray]] = {source: [] for source in SCORE_SOURCES}
        self.done: list[str] = []
        for shard, n in self.expected.items():
            if n == 0:
                self._finish(shard)

    def _tmp(self, shard: str) -> Path:
        return temporary_path(judged_path(self.out, shard))

    def add(self, table: pa.Table) -> None:
        for name in TIMING:
            self.totals[name] += float(pc.sum(table[name]).as_py() or 0)
        for shard in pc.unique(table[SHARD]).to_pylist():
            part = table.filter(pc.equal(table[SHARD], shard))
            if shard not in self.expected:
                raise RuntimeError(f"mined rows for shard {shard!r}, which this run did not schedule")
            ids = part["id"].to_pylist()
            twice = self.seen[shard].intersection(ids)
            if twice or len(set(ids)) != len(ids):
                raise RuntimeError(f"shard {shard}: row {sorted(twice or ids)[0]!r} arrived twice; the output "
                                   "would duplicate it")
            self.seen[shard].update(ids)
            bad = part.filter(pc.is_valid(part[REASON]))
            good = part.filter(pc.is_null(part[REASON]))
            for row in bad.select(["id", "direction", "query_id", "positive_id", REASON]).to_pylist():
                self.quarantine[shard].append({"id": row["id"], "source": shard, "stage": "mine",
                                               "reason": row.pop(REASON), "row": json.dumps(row)})
            for row_id, rejects in zip(ids, part[REWRITE_REJECTS].to_pylist()):
                for reject in rejects or []:
                    item = json.loads(reject)
                    self.quarantine[shard].append({"id": row_id, "source": shard, "stage": "rewrite",
                                                   "reason": item["reason"], "row": reject})
            if good.num_rows:
                if shard not in self.writers:
                    self.writers[shard] = pq.ParquetWriter(self._tmp(shard), JUDGED_SCHEMA)
                self.writers[shard].write_table(good.select(JUDGED_SCHEMA.names).cast(JUDGED_SCHEMA))
                self._keep_scores(good)
            if len(self.seen[shard]) > self.expected[shard]:
                raise RuntimeError(f"shard {shard}: {len(self.seen[shard])} rows for {self.expected[shard]} queries")
            if len(self.seen[shard]) == self.expected[shard]:
                self._finish(shard)

    def _finish(self, shard: str) -> None:
        write_quarantine(pa.Table.from_pylist(self.quarantine.pop(shard, []), schema=QUARANTINE_SCHEMA),
                         self.out, shard)
        tmp = self._tmp(shard)
        writer = self.writers.pop(shard, None)
        if writer is None:
            pq.write_table(JUDGED_SCHEMA.empty_table(), tmp)
        else:
            writer.close()
        publish(tmp, judged_path(self.out, shard))
        self.done.append(shard)

    def close(self) -> None:
        short = {s: f"{len(self.seen[s])}/{n}" for s, n in self.expected.items() if s not in self.done}
        for writer in self.writers.values():
            writer.close()
        for shard in list(self.writers):
            discard(self._tmp(shard))
        if short:
            raise RuntimeError(f"the stream ended with shards incomplete (rows/expected): {short}; their output was "
                               "not written, a re-run redoes them")

    def _keep_scores(self, good: pa.Table) -> None:
        scores = pc.list_flatten(good["candidate_scores"]).to_numpy(zero_copy_only=False).astype(np.float64)
        rewritten = np.char.startswith(
            np.asarray(pc.list_flatten(good["candidate_sources"]).to_pylist(), dtype=str), "rewrite")
        self.scores["retrieved"].append(scores[~rewritten])
        self.scores["rewritten"].append(scores[rewritten])
        self.scores["positive"].append(good["positive_score"].to_numpy(zero_copy_only=False).astype(np.float64))

    def score_values(self, source: str | None = None) -> np.ndarray:
        """The judge scores written this run, NaN where missing: of one source ("positive", "retrieved",
        "rewritten") or of all of them."""
        parts = [p for s in ([source] if source else SCORE_SOURCES) for p in self.scores[s]]
        return np.concatenate(parts) if parts else np.zeros(0)


def output_counts(out: Path) -> dict:
    """Counts over every shard in the output folder (this run's and earlier runs')."""
    counts: Counter = Counter()
    for path in sorted((Path(out) / JUDGED_DIR).glob("*.parquet")):
        t = pq.read_table(path, columns=["direction", "num_false_negatives", "repeated", "fallback",
                                         "judge_missing", "positive_score"])
        counts["judged_rows"] += t.num_rows
        for d in t["direction"].to_pylist():
            counts[f"judged_rows_{d}"] += 1
        counts["false_negatives"] += int(np.sum(t["num_false_negatives"].to_numpy()))
        counts["repeated_rows"] += int(np.sum(t["repeated"].to_numpy()))
        counts["fallback_rows"] += int(np.sum(t["fallback"].to_numpy()))
        counts["judge_missing_candidates"] += int(np.sum(t["judge_missing"].to_numpy()))
        counts["judge_missing_positives"] += t["positive_score"].null_count
    quarantine = quarantine_counts(out)
    counts["quarantined_rows"] = sum(quarantine.values())
    return {"counts": dict(counts), "quarantine_reasons": quarantine}
