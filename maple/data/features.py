"""Reading PAL's feature cache: frozen encoders' token features, cached as Parquet, back as padded tensors.

The cache (written by `maple.stages.features.cache_features`) holds:

    <cache>/encoders/                the untrained aligner whose frozen encoders computed the features
    <cache>/<split>/part-*.parquet   FEATURES_SCHEMA rows, one output shard per input shard (same file name)
    <cache>/<split>/quarantine/      rows whose image did not decode, with the reason

`collate_features` turns cached rows (Ray Data numpy batches or pyarrow columns) into padded tensors;
`FeatureTensors` holds a whole split as tensors for loops in one process. No Ray here.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from maple.data.schema import FEATURES_SCHEMA

ENCODERS_DIR = "encoders"


def encoders_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / ENCODERS_DIR


def feature_paths(cache_dir: str | Path, split: str) -> list[str]:
    """The finished feature shards of a split (not its quarantine folder, not a shard being written): what
    `ray.data.read_parquet` should read for training."""
    paths = sorted(str(p) for p in (Path(cache_dir) / split).glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{Path(cache_dir) / split} holds no cached features; run the cache stage first "
                                "(maple.stages.features.cache_features, or python -m jobs.pal)")
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
