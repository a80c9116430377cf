"""PAL's feature cache: the frozen encoders' token features, computed once into Parquet, read back for training.

The encoders never change, so their token features are a pure function of the data: computing them once turns anchor
training into a few matrix products per step (bench/pal.py measures the speed-up). A cache directory holds:

    <cache>/encoders/           the untrained aligner whose frozen encoders computed the features (AnchorAligner dir)
    <cache>/<split>/part-*.parquet   FEATURES_SCHEMA rows, one output shard per input shard (same file name)
    <cache>/<split>/quarantine/      rows whose image did not decode, with the reason

A finished shard is never recomputed (idempotent resume: a shard appears atomically, renamed from a temporary name).
`cache_features` runs the encoders as a Ray Data actor pool (`TokenFeatures`, a callable class: no Ray import here);
`collate_features` turns cached rows (Ray Data numpy batches or pyarrow columns) into padded tensors.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from maple.data.images import ImageError, decode_image

ENCODERS_DIR = "encoders"

FEATURES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("image_tokens", pa.list_(pa.float16()), nullable=False),  # (n, d_x) row-major; n·d_x values
    pa.field("image_token_count", pa.int32(), nullable=False),  # n
    pa.field("captions", pa.list_(pa.string()), nullable=False),
    pa.field("caption_tokens", pa.list_(pa.list_(pa.float16())), nullable=False),  # per caption (m_j, d_y), real tokens
    pa.field("caption_token_counts", pa.list_(pa.int32()), nullable=False),  # m_j
    pa.field("source", pa.string(), nullable=True),  # the input shard
    pa.field("annotation", pa.string(), nullable=True),  # the synthetic world's scene JSON (segmentation ground truth)
])
ERROR_COLUMN = "image_error"


class TokenFeatures:
    """Ray Data `map_batches` callable: PAIRS_SCHEMA rows (+ a `path` column) -> FEATURES_SCHEMA rows + `image_error`.

    Each actor loads the frozen encoders once from a saved aligner directory. A row whose image does not decode keeps
    its id with empty features and the reason in `image_error`, so the driver can quarantine it.
    """

    def __init__(self, encoders_dir: str, batch_size: int = 32, device: str | None = None):
        from maple.models.anchor import AnchorAligner

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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


def encoders_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / ENCODERS_DIR


def ensure_encoders(cfg, cache_dir: str | Path, seed: int = 0) -> Path:
    """The cache's frozen encoders: saved once as an untrained aligner (`cfg`: a ModelConfig of family "pal"), so
    that every feature in the cache, and every aligner trained from it, uses the very same encoders."""
    from maple.models.anchor import AnchorAligner

    path = encoders_dir(cache_dir)
    if not (path / "maple_embedder.json").exists():
        torch.manual_seed(seed)
        AnchorAligner.tiny(cfg).save_pretrained(path)
    return path


def cache_features(split_dir: str | Path, cache_dir: str | Path, split: str, encoders: str | Path,
                   batch_size: int = 32, concurrency: int = 1, num_cpus: float = 1) -> dict[str, Any]:
    """Compute the token features of every not-yet-cached shard of `split_dir` into `<cache_dir>/<split>/`.

    Ray Data streams the pairs through a `TokenFeatures` actor pool; the driver writes each output shard under its
    input shard's name, atomically. Returns {"computed": [shard names], "skipped": [...], "rows": n, "quarantined": n}.
    """
    import ray.data

    from maple.data.quarantine import write_quarantine

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
    tmp = {p.name: out / f".{p.name}.tmp-{os.getpid()}" for p in todo}
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
            os.replace(tmp[name], out / name)
    finally:
        for writer in writers.values():
            writer.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return report


def _source_of(table: pa.Table, name: str) -> str:
    return next(p for p in table["source"].to_pylist() if Path(p).name == name)


# --- reading back -------------------------------------------------------------------------------------------------


def feature_paths(cache_dir: str | Path, split: str) -> list[str]:
    """The finished feature shards of a split (not its quarantine folder, not a shard being written): what
    `ray.data.read_parquet` should read for training."""
    paths = sorted(str(p) for p in (Path(cache_dir) / split).glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{Path(cache_dir) / split} holds no cached features; run the cache stage first "
                                "(maple.models.feature_cache.cache_features, or python -m jobs.pal)")
    return paths


def read_features(cache_dir: str | Path, split: str, limit: int | None = None) -> pa.Table:
    """The cached FEATURES_SCHEMA rows of a split (first `limit` rows, in shard order)."""
    table = pa.concat_tables([pq.read_table(p, schema=FEATURES_SCHEMA) for p in feature_paths(cache_dir, split)])
    return table.slice(0, limit) if limit is not None else table


def caption_choice(row_id: str, n_captions: int, epoch: int, seed: int) -> int:
    """Which caption of a row is its text in this epoch: deterministic in (id, epoch, seed), spread over captions."""
    return zlib.crc32(f"{row_id}:{epoch}:{seed}".encode()) % n_captions


def _pad(arrays: list[np.ndarray], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(a) for a in arrays)
    tokens = torch.zeros(len(arrays), length, dim, dtype=torch.float32)
    mask = torch.zeros(len(arrays), length, dtype=torch.bool)
    for i, a in enumerate(arrays):
        tokens[i, :len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        mask[i, :len(a)] = True
    return tokens, mask


def collate_features(rows: dict[str, Any], epoch: int = 0, seed: int = 0, caption: int | None = None
                     ) -> dict[str, torch.Tensor]:
    """Cached rows -> {"image_tokens" (B, n, d_x), "image_mask" (B, n), "text_tokens" (B, m, d_y),
    "text_mask" (B, m)}: each row's image with one caption (`caption_choice`, or index `caption` when given).

    rows: columns of FEATURES_SCHEMA as Ray Data numpy batches or plain lists (lists of arrays per row).
    """
    images, texts = [], []
    for i, row_id in enumerate(rows["id"]):
        n = int(rows["image_token_count"][i])
        flat = np.asarray(rows["image_tokens"][i], dtype=np.float32)
        images.append(flat.reshape(n, -1))
        counts = list(rows["caption_token_counts"][i])
        j = caption if caption is not None else caption_choice(str(row_id), len(counts), epoch, seed)
        texts.append(np.asarray(rows["caption_tokens"][i][j], dtype=np.float32).reshape(int(counts[j]), -1))
    image_tokens, image_mask = _pad(images, images[0].shape[1])
    text_tokens, text_mask = _pad(texts, texts[0].shape[1])
    return {"image_tokens": image_tokens, "image_mask": image_mask, "text_tokens": text_tokens, "text_mask": text_mask}


class FeatureTensors:
    """A cached split held as padded tensors, for loops in one process (study, benchmark): batches are indexing.

    image: (N, n, d_x) float16; text: (M, m, d_y) float16 with text_mask (M, m), every caption of every row;
    caption_start/caption_count: (N,) where row i's captions lie in `text`.
    """

    def __init__(self, table: pa.Table):
        self.ids = table["id"].to_pylist()
        self.annotations = table["annotation"].to_pylist()
        self.image = torch.from_numpy(image_features(table)).half()
        feats, owner = all_caption_features(table)
        text, self.text_mask = _pad(feats, feats[0].shape[1])
        self.text = text.half()
        self.caption_count = torch.from_numpy(np.bincount(owner, minlength=len(self.ids)))
        self.caption_start = torch.cumsum(self.caption_count, 0) - self.caption_count
        self.caption_owner = torch.from_numpy(owner)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: torch.Tensor, epoch: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
        """The `collate_features` batch of rows `rows` (B,) with the same caption choice."""
        choice = torch.tensor([caption_choice(self.ids[i], int(self.caption_count[i]), epoch, seed)
                               for i in rows.tolist()])
        caps = self.caption_start[rows] + choice
        width = int(self.text_mask[caps].sum(1).max())
        return {"image_tokens": self.image[rows].float(),
                "image_mask": torch.ones(self.image[rows].shape[:2], dtype=torch.bool),
                "text_tokens": self.text[caps, :width].float(), "text_mask": self.text_mask[caps, :width]}


def all_caption_features(table: pa.Table) -> tuple[list[np.ndarray], np.ndarray]:
    """Every caption's token features of a cached split, and the row (image) each caption belongs to."""
    # Straight from the Arrow buffers: to_pylist would box every float.
    column = table["caption_tokens"].combine_chunks()
    per_row = column.value_lengths().to_numpy()
    captions = column.flatten()
    values = np.asarray(captions.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    bounds = np.concatenate([[0], np.cumsum(captions.value_lengths().to_numpy())])
    counts = np.concatenate([np.asarray(c, dtype=np.int64) for c in table["caption_token_counts"].to_pylist()])
    feats = [values[a:b].reshape(m, -1) for a, b, m in zip(bounds, bounds[1:], counts)]
    return feats, np.repeat(np.arange(len(table)), per_row)


def image_features(table: pa.Table) -> np.ndarray:
    """(N, n, d_x) float32 patch tokens of a cached split (every image has the same token count)."""
    counts = table["image_token_count"].to_numpy()
    if len(set(counts.tolist())) > 1:
        raise ValueError(f"cached images have different token counts {sorted(set(counts.tolist()))}; "
                         "resize images to one size before caching")
    flat = np.asarray(table["image_tokens"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                      dtype=np.float32)
    return flat.reshape(len(table), int(counts[0]), -1)
