"""PAL's feature cache stage: frozen encoders' token features, computed once into Parquet by a Ray Data actor pool.

The encoders never change, so their token features are a pure function of the data: computing them once turns anchor
training into a few matrix products per step (bench/pal.py measures the speed-up). The cache's layout and reading it
back are `maple.data.features`. A finished shard is never recomputed (idempotent resume: a shard appears atomically,
renamed from a temporary name).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import torch

from maple.data.config import WorldConfig
from maple.data.features import encoders_dir
from maple.data.files import discard, publish, temporary_path
from maple.data.images import ImageError, decode_image
from maple.data.quarantine import write_quarantine
from maple.data.schema import FEATURES_SCHEMA
from maple.data.synth import synthesize
from maple.models.anchor import AnchorAligner
from maple.models.checkpoint import resolve_device
from maple.models.config import ModelConfig
from maple.models.embedder import MANIFEST

log = logging.getLogger(__name__)
ERROR_COLUMN = "image_error"


class TokenFeatures:
    """Ray Data `map_batches` callable: PAIRS_SCHEMA rows (+ a `path` column) -> FEATURES_SCHEMA rows + `image_error`.

    Each actor loads the frozen encoders once from a saved aligner directory. A row whose image does not decode keeps
    its id with empty features and the reason in `image_error`, so the driver can quarantine it.
    """

    def __init__(self, encoders_dir: str, batch_size: int = 32, device: str | None = None):
        self.device = resolve_device(device)
        self.model = AnchorAligner.from_pretrained(encoders_dir).to(self.device).eval()
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        images, ok, errors = [], [], [""] * len(rows)
        for i, row in enumerate(rows):
            try:
                images.append(decode_image(row["image"] if row["image"] is not None else b""))
                ok.append(i)
            except ImageError as exc:
                errors[i] = f"{exc.reason}: {exc}"
        image_feats: list[np.ndarray] = [np.zeros((0, 0), np.float16)] * len(rows)
        for b in range(0, len(ok), self.batch_size):
            pixels = self.model.preprocess(images[b:b + self.batch_size])["pixel_values"].to(self.device)
            tokens, _ = self.model.image_tokens(pixels)
            for j, t in zip(ok[b:b + self.batch_size], tokens.cpu().numpy()):
                image_feats[j] = t.astype(np.float16)
        texts = [str(c) for row in rows for c in row["captions"]]
        caption_feats = self.text_features(texts)
        out, k = [], 0
        for i, row in enumerate(rows):
            n_cap = len(row["captions"])
            caps = caption_feats[k:k + n_cap]
            k += n_cap
            out.append({"id": row["id"], "image_tokens": image_feats[i].reshape(-1),
                        "image_token_count": image_feats[i].shape[0], "captions": list(row["captions"]),
                        "caption_tokens": [c.reshape(-1) for c in caps], "caption_token_counts": [len(c) for c in caps],
                        "source": row.get("path") or row.get("source"), "annotation": row.get("annotation"),
                        ERROR_COLUMN: errors[i]})
        schema = FEATURES_SCHEMA.append(pa.field(ERROR_COLUMN, pa.string()))
        return pa.Table.from_pylist(out, schema=schema)

    def text_features(self, texts: list[str]) -> list[np.ndarray]:
        """Real tokens' final states of each text: a list of (m_j, d_y) float16 arrays."""
        feats = []
        for b in range(0, len(texts), self.batch_size):
            inputs = {k: v.to(self.device) for k, v in self.model.tokenize(texts[b:b + self.batch_size]).items()}
            hidden, mask = self.model.text_tokens(**inputs)
            for h, m in zip(hidden.cpu().numpy(), mask.bool().cpu().numpy()):
                feats.append(h[m].astype(np.float16))
        return feats


def ensure_encoders(cfg: ModelConfig, cache_dir: str | Path, seed: int = 0) -> Path:
    """The cache's frozen encoders: saved once as an untrained aligner (`cfg`: a ModelConfig of family "pal"), so
    that every feature in the cache, and every aligner trained from it, uses the very same encoders."""
    path = encoders_dir(cache_dir)
    if not (path / MANIFEST).exists():
        torch.manual_seed(seed)
        AnchorAligner.tiny(cfg).save_pretrained(path)
    return path


def cache_features(split_dir: str | Path, cache_dir: str | Path, split: str, encoders: str | Path,
                   batch_size: int = 32, concurrency: int = 1, num_cpus: float = 1) -> dict[str, Any]:
    """Compute the token features of every not-yet-cached shard of `split_dir` into `<cache_dir>/<split>/`.

    Ray Data streams the pairs through a `TokenFeatures` actor pool; the driver writes each output shard under its
    input shard's name, atomically. Returns {"computed": [shard names], "skipped": [...], "rows": n, "quarantined": n}.
    """
    out = Path(cache_dir) / split
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(Path(split_dir).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{split_dir} has no *.parquet shards to cache; write the split first "
                                "(python -m jobs.synth, or point data.path at Parquet pairs)")
    todo = [p for p in shards if not (out / p.name).exists()]
    report: dict[str, Any] = {"computed": [p.name for p in todo], "skipped": [p.name for p in shards if p not in todo],
                              "rows": 0, "quarantined": 0}
    if not todo:
        return report
    ds = ray.data.read_parquet([str(p) for p in todo], include_paths=True)
    ds = ds.map_batches(TokenFeatures, fn_constructor_kwargs=dict(encoders_dir=str(encoders), batch_size=batch_size),
                        batch_format="pyarrow", batch_size=batch_size, num_cpus=num_cpus,
                        compute=ray.data.ActorPoolStrategy(size=concurrency))
    tmp = {p.name: temporary_path(out / p.name) for p in todo}
    writers = {name: pq.ParquetWriter(path, FEATURES_SCHEMA) for name, path in tmp.items()}
    bad: dict[str, list[dict]] = {name: [] for name in tmp}
    try:
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for name in set(Path(p).name for p in table["source"].to_pylist()):
                part = table.filter(pa.compute.equal(table["source"], _source_of(table, name)))
                good = part.filter(pa.compute.equal(part[ERROR_COLUMN], ""))
                writers[name].write_table(good.drop_columns([ERROR_COLUMN]).cast(FEATURES_SCHEMA))
                report["rows"] += good.num_rows
                for row in part.filter(pa.compute.not_equal(part[ERROR_COLUMN], "")).to_pylist():
                    bad[name].append({"id": row["id"], "source": row["source"], "stage": "pal_feature_cache",
                                      "reason": row[ERROR_COLUMN], "row": json.dumps({"captions": row["captions"]})})
        for name, writer in writers.items():
            writer.close()
            write_quarantine(bad[name], out, name)
            report["quarantined"] += len(bad[name])
            publish(tmp[name], out / name)
    finally:
        for writer in writers.values():
            writer.close()
        for path in tmp.values():
            discard(path)
    return report


def _source_of(table: pa.Table, name: str) -> str:
    return next(p for p in table["source"].to_pylist() if Path(p).name == name)


def prepare_features(world: WorldConfig, world_dir: str | Path, model: ModelConfig, cache_dir: str | Path,
                     splits: tuple[str, ...] = ("train", "val", "test"), seed: int = 0, batch_size: int = 32
                     ) -> dict[str, dict[str, Any]]:
    """The world's splits (synthesised where missing) and their cached token features; finished shards are reused.
    Returns each split's `cache_features` report."""
    world_dir = Path(world_dir)
    if not all((world_dir / s).exists() for s in splits):
        synthesize(world, world_dir)
    encoders = ensure_encoders(model, cache_dir, seed=seed)
    reports = {}
    for split in splits:
        reports[split] = report = cache_features(world_dir / split, cache_dir, split, encoders, batch_size=batch_size)
        log.info("feature cache %s: %d shards computed, %d reused, %d rows, %d quarantined", split,
                 len(report["computed"]), len(report["skipped"]), report["rows"], report["quarantined"])
    return reports
