"""Parquet rows to model inputs for the training step (no Ray: Ray Data hands the rows over as numpy batches).

Two inputs are accepted:

- PAIRS_SCHEMA (InfoNCE only): the query is one caption (chosen per epoch), the positive the image; nothing else.
- JUDGED_SCHEMA (the mining output): query_text or query_image, positive_image or _text; hard negatives and scores
  from hard_negative_* (or the rewriter's rewrites, unjudged: NegCLIP); RPA's ranking from ranking_*.

A judged batch may mix directions (t2i rows query with text, i2t rows with an image): each slot is a `MixedInputs`
that holds the text rows and the image rows separately and puts their embeddings back in row order; `groups` (the
direction) keeps InfoNCE to one direction per softmax, and the content keys of queries and positives keep rows that
share one out of each other's denominators (`maple.losses.infonce_loss`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from maple.data.images import decode_image
from maple.losses.config import LossConfig
from maple.models.embedder import Embedder
from maple.rewrite.config import MEANING_CHANGING

PAIRS_COLUMNS = ("id", "image", "captions")
JUDGED_COLUMNS = ("id", "direction", "query_text", "query_image", "positive_text", "positive_image")
SCORE_COLUMNS = ("positive_score", "hard_negative_scores")
HARD_NEGATIVE_COLUMNS = ("hard_negative_texts", "hard_negative_images")
RANKING_COLUMNS = ("ranking_ids", "ranking_scores", "ranking_texts", "ranking_images")
REWRITE_COLUMNS = ("rewrite_texts", "rewrite_kinds")
DIRECTIONS = {"t2i": 0, "i2t": 1}


# --- column checks (the driver runs them before any worker starts) -------------------------------------------------

def input_kind(schema: pa.Schema) -> str:
    """"judged" (the mining job's rows) or "pairs"; ValueError naming what is missing otherwise."""
    names = set(schema.names)
    if {"direction", "positive_id"} <= names:
        return "judged"
    if set(PAIRS_COLUMNS) <= names:
        return "pairs"
    raise ValueError(f"columns {sorted(names)} are neither image-text pairs (need {list(PAIRS_COLUMNS)}) nor the "
                     f"mining job's judged rows (need {list(JUDGED_COLUMNS)})")


def check_columns(schema: pa.Schema, loss: LossConfig, source: str) -> str:
    """Raise ValueError when the configured loss needs columns that `source` lacks; return its kind.

    The soft-label KL and RPA over mined candidates need judge scores and hard negatives (JUDGED_SCHEMA); so do
    InfoNCE's extended negatives (train.loss.hard_negatives); RPA over the preference ranking needs the ranking
    columns; NegCLIP-style negatives (hard_negative_source=rewrites) the rewriter's columns."""
    kind = input_kind(schema)
    wanted, needed = [], []
    if loss.rpa != "none":
        wanted.append(f"train.loss.rpa={loss.rpa}")
        needed += RANKING_COLUMNS if loss.rpa_candidates == "ranking" else [*SCORE_COLUMNS, *HARD_NEGATIVE_COLUMNS]
    if loss.kl_weight > 0:
        wanted.append(f"train.loss.kl_weight={loss.kl_weight}")
        needed += [*SCORE_COLUMNS, *HARD_NEGATIVE_COLUMNS]
    if loss.infonce and loss.hard_negatives:
        wanted.append("train.loss.hard_negatives=true")
        needed += REWRITE_COLUMNS if loss.hard_negative_source == "rewrites" else HARD_NEGATIVE_COLUMNS
    needed = list(dict.fromkeys(needed))
    missing = [c for c in (JUDGED_COLUMNS if kind == "judged" else PAIRS_COLUMNS) + tuple(needed)
               if c not in schema.names]
    if missing:
        reason = f" ({', '.join(wanted)} needs the mining job's judged rows with these columns)" if wanted else ""
        raise ValueError(f"{source}: missing columns {missing}{reason}; train on the mining job's output "
                         f"(jobs/mine.py, JUDGED_SCHEMA) or set train.loss.rpa=none, train.loss.kl_weight=0, "
                         f"train.loss.hard_negatives=false for plain pairs")
    return kind


# --- model inputs ---------------------------------------------------------------------------------------------------

def slice_inputs(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows start:stop of a tokenizer / image-processor output.

    Every tensor is sliced along dim 0, except Qwen2-VL's `pixel_values`, which concatenates all images' patches
    ((sum of patches, C·T·P·P)) and is sliced with `image_grid_thw` (N, 3) instead."""
    out = {k: v[start:stop] for k, v in inputs.items() if k != "pixel_values"}
    if "pixel_values" in inputs:
        pixels = inputs["pixel_values"]
        if "image_grid_thw" in inputs:
            bounds = np.concatenate([[0], np.cumsum(inputs["image_grid_thw"].prod(-1).tolist())])
            pixels = pixels[int(bounds[start]):int(bounds[stop])]
        else:
            pixels = pixels[start:stop]
        out["pixel_values"] = pixels
    return out


def _rows(inputs: dict[str, torch.Tensor] | None) -> int:
    if not inputs:
        return 0
    return int(next(v.shape[0] for k, v in inputs.items() if k != "pixel_values"))


@dataclass
class MixedInputs:
    """One slot of a batch (queries, positives or hard negatives) whose rows are texts or images.

    text_rows / image_rows: (n_text,) / (n_image,) long, positions in the slot; text / image: the model inputs of
    those rows, in that order (None when there are none)."""

    n: int
    text_rows: torch.Tensor
    text: dict[str, torch.Tensor] | None
    image_rows: torch.Tensor
    image: dict[str, torch.Tensor] | None

    @classmethod
    def build(cls, model: Embedder, items: list[Any], is_text: list[bool]) -> "MixedInputs":
        """items: str for a text row, a PIL image for an image row."""
        text_rows = [i for i, t in enumerate(is_text) if t]
        image_rows = [i for i, t in enumerate(is_text) if not t]
        return cls(
            n=len(items),
            text_rows=torch.tensor(text_rows, dtype=torch.long),
            text=model.tokenize([items[i] for i in text_rows]) if text_rows else None,
            image_rows=torch.tensor(image_rows, dtype=torch.long),
            image=model.preprocess([items[i] for i in image_rows]) if image_rows else None,
        )

    def embed(self, model: Embedder) -> torch.Tensor:
        """(n, D) embeddings in row order, differentiable (index_copy keeps the graph of both parts)."""
        parts = []
        dtype = next(model.parameters()).dtype
        if self.text is not None:
            parts.append((self.text_rows, model.embed_texts(**_to(self.text, model.device, dtype))))
        if self.image is not None:
            parts.append((self.image_rows, model.embed_images(**_to(self.image, model.device, dtype))))
        first = parts[0][1]
        out = first.new_zeros(self.n, first.shape[1])
        for rows, z in parts:
            out = out.index_copy(0, rows.to(z.device), z.to(out.dtype))
        return out

    def chunks(self, size: int) -> list["MixedInputs"]:
        """Consecutive row chunks of at most `size` rows (GradCache)."""
        out = []
        for start in range(0, self.n, size):
            stop = min(start + size, self.n)
            parts = {}
            for name, rows, inputs in (("text", self.text_rows, self.text), ("image", self.image_rows, self.image)):
                keep = ((rows >= start) & (rows < stop)).nonzero().flatten()
                if len(keep) == 0 or inputs is None:
                    parts[name] = (torch.empty(0, dtype=torch.long), None)
                else:  # rows are sorted, so the kept ones are a contiguous range of this modality's inputs
                    lo, hi = int(keep[0]), int(keep[-1]) + 1
                    parts[name] = (rows[lo:hi] - start, slice_inputs(inputs, lo, hi))
            out.append(MixedInputs(stop - start, parts["text"][0], parts["text"][1], parts["image"][0],
                                   parts["image"][1]))
        return out


def _to(inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # Pixels follow the weights' dtype (bf16 under DeepSpeed bf16); ids and masks stay integers.
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


@dataclass
class EmbedderBatch:
    """One worker's micro-batch for `maple.train.step.train_step`.

    query, positive: (N rows each); hard_negatives: N·k rows, row i·k + j is query i's j-th negative (or None);
    positive_score (N,) and hard_negative_scores (N, k) float32, NaN where the judge gave none (or None);
    ranking: N·p rows, row i·p + j the j-th drawn candidate of query i's preference ranking, with ranking_scores
    (N, p), NaN where a short ranking is padded (or None); groups (N,) the direction (0 t2i / pairs, 1 i2t);
    query_keys, positive_keys (N,) int64 content keys (`content_key`)."""

    ids: list[str]
    query: MixedInputs
    positive: MixedInputs
    hard_negatives: MixedInputs | None = None
    k: int = 0
    positive_score: torch.Tensor | None = None
    hard_negative_scores: torch.Tensor | None = None
    ranking: MixedInputs | None = None
    ranking_size: int = 0
    ranking_scores: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    query_keys: torch.Tensor | None = None
    positive_keys: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def choose_caption(row_id: str, n_captions: int, epoch: int, seed: int) -> int:
    """Index of the caption used for `row_id` in `epoch`: deterministic (a hash, not Python's salted hash()), so a
    restarted worker and every rank agree, and different across epochs so all captions are seen."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_captions


def content_key(item: str | bytes) -> int:
    """An int64 key of a text or an image's bytes: equal content, equal key, on every rank and in every run."""
    data = item.encode() if isinstance(item, str) else bytes(item)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _keys(items: list) -> torch.Tensor:
    return torch.tensor([content_key(x) for x in items], dtype=torch.long)


def _draw(row_id: str, n: int, size: int | None, keep: int | None, epoch: int, seed: int) -> list[int]:
    """Up to `size` of n positions (all when size is None), always `keep` (the positive) when it is one of them,
    drawn by (row, epoch, seed), in their original (ranking) order."""
    if size is None or n <= size:
        return list(range(n))
    digest = hashlib.blake2b(f"{seed}:{epoch}:{row_id}:ranking".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    rest = [j for j in range(n) if j != keep]
    chosen = set(rng.choice(rest, size=size - (keep is not None), replace=False).tolist())
    return sorted(chosen | ({keep} if keep is not None else set()))


def _image(data: Any, row_id: str, column: str):
    if data is None:
        raise ValueError(f"row {row_id}: {column} is null where an image is needed; validate the input "
                         f"(maple.data.validate) so bad rows go to the quarantine before training")
    return decode_image(bytes(data))


def collate_pairs(model: Embedder, rows: dict[str, np.ndarray], epoch: int, seed: int) -> EmbedderBatch:
    """PAIRS_SCHEMA rows -> query = one caption per row (`choose_caption`), positive = the row's image."""
    ids = [str(i) for i in rows["id"]]
    texts = []
    for row_id, captions in zip(ids, rows["captions"]):
        captions = list(captions)
        if not captions:
            raise ValueError(f"row {row_id}: no captions; validate the input before training")
        texts.append(str(captions[choose_caption(row_id, len(captions), epoch, seed)]))
    images = [_image(data, row_id, "image") for row_id, data in zip(ids, rows["image"])]
    n = len(ids)
    return EmbedderBatch(ids, MixedInputs.build(model, texts, [True] * n),
                         MixedInputs.build(model, images, [False] * n), groups=torch.zeros(n, dtype=torch.long),
                         query_keys=_keys(texts), positive_keys=_keys([bytes(b) for b in rows["image"]]))


def _scores(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)


def collate_judged(model: Embedder, rows: dict[str, np.ndarray], loss: LossConfig | None = None, epoch: int = 0,
                   seed: int = 0) -> EmbedderBatch:
    """JUDGED_SCHEMA rows -> query, positive, and what `loss` reads: hard negatives (k per row, equal across the
    batch; the mined ones with their judge scores, or the rewriter's meaning-changing rewrites for
    hard_negative_source=rewrites) and each query's preference ranking (loss.rpa_list_size candidates drawn per row
    and epoch). Without `loss`, everything the mined rows hold."""
    loss = loss or LossConfig(hard_negatives=True, rpa="pairwise", rpa_candidates="mined", kl_weight=1.0)
    ids = [str(i) for i in rows["id"]]
    is_t2i = []
    for row_id, direction in zip(ids, rows["direction"]):
        if direction not in DIRECTIONS:
            raise ValueError(f"row {row_id}: direction {direction!r} is neither 't2i' nor 'i2t'")
        is_t2i.append(direction == "t2i")
    raw_queries = [rows["query_text"][i] if t else rows["query_image"][i] for i, t in enumerate(is_t2i)]
    raw_positives = [rows["positive_image"][i] if t else rows["positive_text"][i] for i, t in enumerate(is_t2i)]
    queries = [str(q) if t else _image(q, ids[i], "query_image") for i, (q, t) in enumerate(zip(raw_queries, is_t2i))]
    positives = [_image(p, ids[i], "positive_image") if t else str(p)
                 for i, (p, t) in enumerate(zip(raw_positives, is_t2i))]
    batch = EmbedderBatch(ids, MixedInputs.build(model, queries, is_t2i),
                          MixedInputs.build(model, positives, [not t for t in is_t2i]),
                          groups=torch.tensor([DIRECTIONS[str(d)] for d in rows["direction"]], dtype=torch.long),
                          query_keys=_keys([q if isinstance(q, str) else bytes(q) for q in raw_queries]),
                          positive_keys=_keys([p if isinstance(p, str) else bytes(p) for p in raw_positives]))
    scored = loss.kl_weight > 0 or (loss.rpa != "none" and loss.rpa_candidates == "mined")
    if scored or (loss.infonce and loss.hard_negatives and loss.hard_negative_source == "mined"):
        _add_mined_negatives(batch, model, rows, is_t2i)
    elif loss.infonce and loss.hard_negatives:
        _add_rewrite_negatives(batch, model, rows, is_t2i, epoch, seed)
    if loss.rpa != "none" and loss.rpa_candidates == "ranking":
        _add_ranking(batch, model, rows, is_t2i, loss.rpa_list_size, epoch, seed)
    return batch


def _add_mined_negatives(batch: EmbedderBatch, model: Embedder, rows: dict[str, np.ndarray], is_t2i: list[bool]
                         ) -> None:
    ids = batch.ids
    negatives, neg_is_text, ks = [], [], set()
    for i, t in enumerate(is_t2i):
        column = "hard_negative_images" if t else "hard_negative_texts"
        values = rows[column][i]
        if values is None:
            raise ValueError(f"row {ids[i]}: {column} is null for a {'t2i' if t else 'i2t'} row")
        values = list(values)
        ks.add(len(values))
        negatives.extend(_image(v, ids[i], column) if t else str(v) for v in values)
        neg_is_text.extend([not t] * len(values))
    if len(ks) != 1 or 0 in ks:
        raise ValueError(f"rows {ids[0]}..{ids[-1]}: hard negatives per row differ or are empty ({sorted(ks)}); the "
                         f"mining job writes the same k for every row (mine.num_hard_negatives)")
    (k,) = ks
    hard_scores = np.stack([_scores(v) for v in rows["hard_negative_scores"]])
    if hard_scores.shape != (len(ids), k):
        raise ValueError(f"rows {ids[0]}..{ids[-1]}: hard_negative_scores has {hard_scores.shape[1]} entries per row "
                         f"but there are {k} hard negatives")
    batch.hard_negatives = MixedInputs.build(model, negatives, neg_is_text)
    batch.k = k
    batch.positive_score = torch.from_numpy(_scores(rows["positive_score"]))
    batch.hard_negative_scores = torch.from_numpy(hard_scores)


def _add_rewrite_negatives(batch: EmbedderBatch, model: Embedder, rows: dict[str, np.ndarray], is_t2i: list[bool],
                           epoch: int, seed: int) -> None:
    """NegCLIP's recipe: the rewriter's meaning-changing rewrites of the positive as plain negatives, unjudged; as
    many per row as the mined negatives (the same compute), drawn by (row, epoch, seed), repeated where fewer."""
    k = len(rows["hard_negative_ids"][0])
    if k == 0:
        raise ValueError("hard_negative_source=rewrites draws as many rewrites per row as the mining job's hard "
                         "negatives (mine.num_hard_negatives), which is 0 here")
    negatives = []
    for i, t in enumerate(is_t2i):
        pool = [str(text) for text, kind in zip(rows["rewrite_texts"][i], rows["rewrite_kinds"][i])
                if kind in MEANING_CHANGING]
        if t or not pool:
            raise ValueError(f"row {batch.ids[i]}: no meaning-changing rewrite to use as a negative "
                             f"(train.loss.hard_negative_source=rewrites needs image→text rows mined with a rewriter, "
                             f"rewrite.backend); use hard_negative_source=mined")
        drawn = _draw(batch.ids[i], len(pool), min(k, len(pool)), None, epoch, seed)
        negatives.extend(pool[drawn[j % len(drawn)]] for j in range(k))
    batch.hard_negatives = MixedInputs.build(model, negatives, [True] * len(negatives))
    batch.k = k


def _add_ranking(batch: EmbedderBatch, model: Embedder, rows: dict[str, np.ndarray], is_t2i: list[bool],
                 size: int | None, epoch: int, seed: int) -> None:
    """Each query's drawn ranking candidates (the positive always among them), padded to the batch's longest with
    the row's first candidate at a NaN score (masked out of RPA)."""
    drawn = []
    for i, t in enumerate(is_t2i):
        ranked_ids = [str(x) for x in rows["ranking_ids"][i]]
        if not ranked_ids:
            raise ValueError(f"row {batch.ids[i]}: an empty preference ranking (the judge scored none of its "
                             f"candidates); check the judge's output (judge_missing) or use rpa_candidates=mined")
        keep = ranked_ids.index(str(rows["positive_id"][i])) if str(rows["positive_id"][i]) in ranked_ids else None
        drawn.append(_draw(batch.ids[i], len(ranked_ids), size, keep, epoch, seed))
    p = max(len(d) for d in drawn)
    items, is_text, scores = [], [], np.full((len(drawn), p), np.nan, dtype=np.float32)
    for i, (t, positions) in enumerate(zip(is_t2i, drawn)):
        column = "ranking_images" if t else "ranking_texts"
        values, row_scores = rows[column][i], _scores(rows["ranking_scores"][i])
        if values is None or len(values) != len(row_scores):
            raise ValueError(f"row {batch.ids[i]}: {column} does not hold one item per ranking score")
        padded = positions + [positions[0]] * (p - len(positions))
        items.extend(_image(values[j], batch.ids[i], column) if t else str(values[j]) for j in padded)
        is_text.extend([not t] * p)
        scores[i, :len(positions)] = row_scores[positions]
    batch.ranking = MixedInputs.build(model, items, is_text)
    batch.ranking_size = p
    batch.ranking_scores = torch.from_numpy(scores)


def collate(model: Embedder, rows: dict[str, np.ndarray], kind: str, loss: LossConfig, epoch: int,
            seed: int) -> EmbedderBatch:
    """Dispatch on the input kind ("pairs" | "judged"); judged rows carry hard negatives and rankings only when the
    loss uses them (they cost forward passes)."""
    if kind == "pairs":
        return collate_pairs(model, rows, epoch, seed)
    return collate_judged(model, rows, loss, epoch, seed)


__all__ = ["EmbedderBatch", "MixedInputs", "check_columns", "choose_caption", "collate", "collate_judged",
           "collate_pairs", "content_key", "input_kind", "slice_inputs"]
