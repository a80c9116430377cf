"""Training the reranker on the mining job's output (JUDGED_SCHEMA rows), UniME-V2's pairwise + listwise objective.

For each row (a query with its positive and its mined hard negatives, each scored by the judge):
- pairwise: (q, c+) → "Yes" and (q, hardest negative) → "No"; the hardest negative is the one the judge scored
  highest (it survived the false-negative filter, so it is still a negative);
- listwise: the positive hidden among the x highest-scored negatives at a slot drawn uniformly from all x+1 (the
  last included, unlike UniME-V2's released code), and the reranker names the positive's slot.

`collate_reranker` turns rows into a `RerankerBatch`; `reranker_loss_terms` is the objective (no Ray, no DeepSpeed:
callable in a notebook); `RerankerTask` plugs both into the one Ray Train + DeepSpeed loop (`maple.train`).
`maple.data.splits.split_rows` holds out a fixed share of the mined rows (by a hash of the id) for validation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from maple.data.images import decode_image
from maple.losses.reranker import listwise_slots, reranker_listwise_loss, reranker_pairwise_loss
from maple.models.config import RerankerConfig
from maple.models.cross_encoder import CrossEncoderReranker
from maple.models.families import build_reranker
from maple.models.generative_reranker import MAX_LIST_SIZE
from maple.models.reranker import Item, Reranker
from maple.train.config import TrainConfig
from maple.train.step import backward, optimizer_step
from maple.train.task import TrainTask


@dataclass
class RerankerBatch:
    """One micro-batch: N queries, their positives, hardest negatives, and listwise candidate lists.

    lists: N lists of x+1 candidates; slots: (N,) long, where each list holds its positive."""

    ids: list[str]
    queries: list[Item]
    positives: list[Item]
    hardest: list[Item]
    lists: list[list[Item]]
    slots: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)


def hardest_negative(scores: list[float]) -> int:
    """Index of the highest-scored hard negative; the first on ties; the first where no score is known (NaN: the
    mining fallback drew random negatives)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a judged row without hard negatives cannot train the reranker")
    if np.isnan(values).all():
        return 0
    return int(np.nanargmax(values))


def top_negatives(scores: list[float], x: int) -> list[int]:
    """Indices of the x highest-scored hard negatives, best first (stable; unknown scores last); repeated in that
    order where a row has fewer than x (mining repeats too, and the list prompt needs x+1 slots)."""
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = [int(i) for i in np.argsort(-values, kind="stable")]
    return [order[i % len(order)] for i in range(x)]


def slot_generator(row_id: str, epoch: int, seed: int) -> torch.Generator:
    """A generator fixed by (row, epoch, seed): a resumed run redraws the same slots; a new epoch, new ones."""
    return torch.Generator().manual_seed(zlib.crc32(f"{row_id}:{epoch}:{seed}".encode()))


def _side(row: dict, prefix: str) -> Item:
    text, image = row.get(f"{prefix}_text"), row.get(f"{prefix}_image")
    if image is not None:
        return decode_image(bytes(image))
    if text is None:
        raise ValueError(f"judged row {row.get('id')}: neither {prefix}_text nor {prefix}_image is set")
    return str(text)


def collate_reranker(rows: dict[str, np.ndarray], listwise_size: int, epoch: int = 0, seed: int = 0
                     ) -> RerankerBatch:
    """JUDGED_SCHEMA rows (a numpy batch, as Ray Data yields it) -> a `RerankerBatch`. Images are decoded here."""
    n = len(rows["id"])
    batch = RerankerBatch([], [], [], [], [], torch.empty(n, dtype=torch.long))
    for i in range(n):
        row = {k: v[i] for k, v in rows.items()}
        rid = str(row["id"])
        if row["direction"] == "t2i":
            negatives = [decode_image(bytes(b)) for b in row["hard_negative_images"]]
        else:
            negatives = [str(t) for t in row["hard_negative_texts"]]
        scores = [float("nan") if s is None else float(s) for s in row["hard_negative_scores"]]
        if len(negatives) != len(scores) or not negatives:
            raise ValueError(f"judged row {rid}: {len(negatives)} hard negatives but {len(scores)} scores; the "
                             f"mining output is inconsistent, re-run jobs.mine on its shard")
        positive = _side(row, "positive")
        chosen = [negatives[j] for j in top_negatives(scores, listwise_size)]
        slot = int(listwise_slots(listwise_size, slot_generator(rid, epoch, seed))[0])
        batch.ids.append(rid)
        batch.queries.append(_side(row, "query"))
        batch.positives.append(positive)
        batch.hardest.append(negatives[hardest_negative(scores)])
        batch.lists.append(chosen[:slot] + [positive] + chosen[slot:])
        batch.slots[i] = slot
    return batch


def reranker_loss_terms(model: Reranker, batch: RerankerBatch, pairwise_weight: float = 1.0,
                        listwise_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """UniME-V2's reranker objective on one batch: {"loss", "pairwise", "listwise"} (scalars; "loss" trains).

    pairwise = CE(Yes | q, c+) + CE(No | q, hardest negative); listwise = CE(slot logits; the positive's slot).
    """
    n = len(batch)
    # (q, c+) and (q, hardest) in one forward: the first n rows are the positives.
    pair = model.pair_logits(batch.queries * 2, batch.positives + batch.hardest)
    pairwise = reranker_pairwise_loss(pair[:n], pair[n:])
    listwise = reranker_listwise_loss(model.list_logits(batch.queries, batch.lists), batch.slots.to(pair.device))
    return {"loss": pairwise_weight * pairwise + listwise_weight * listwise, "pairwise": pairwise,
            "listwise": listwise}


@torch.no_grad()
def reranker_accuracy(model: Reranker, batch: RerankerBatch) -> dict[str, float]:
    """Held-out checks: how often score(q, c+) > score(q, hardest negative), and how often the list's argmax slot is
    the positive's."""
    was_training = model.training
    model.eval()
    n = len(batch)
    pair = model.pair_logits(batch.queries * 2, batch.positives + batch.hardest).float()
    margin = pair[:, 0] - pair[:, 1]
    slots = model.list_logits(batch.queries, batch.lists).argmax(1).cpu()
    model.train(was_training)
    return {"pairwise_accuracy": float((margin[:n] > margin[n:]).float().mean()),
            "listwise_accuracy": float((slots == batch.slots).float().mean())}


# --- the task for the shared training loop (maple.train.loop.run_training) -------------------------------------------

# Columns the reranker reads from the mining job's rows.
REQUIRED_COLUMNS = ("id", "direction", "query_text", "query_image", "positive_text", "positive_image",
                    "hard_negative_scores", "hard_negative_texts", "hard_negative_images")


class RerankerLoss(nn.Module):
    """`reranker_loss_terms` as the loop's loss module (no parameters of its own)."""

    def __init__(self, pairwise_weight: float = 1.0, listwise_weight: float = 1.0):
        super().__init__()
        self.pairwise_weight, self.listwise_weight = pairwise_weight, listwise_weight

    def forward(self, model: Reranker, batch: RerankerBatch) -> dict[str, torch.Tensor]:
        return reranker_loss_terms(model, batch, self.pairwise_weight, self.listwise_weight)


class RerankerTask(TrainTask):
    """Trains `build_reranker(reranker)` on JUDGED_SCHEMA rows with UniME-V2's pairwise + listwise objective.

    The loop's own settings (workers, ZeRO stage, checkpoints) come from `train`; lr, steps and batch size from
    `reranker` (`training_section` copies them into the train section the loop reads)."""

    name = "train_reranker"
    kind = "reranker"

    def __init__(self, reranker: RerankerConfig, max_grad_norm: float = 1.0, seed: int = 0):
        self.cfg, self.max_grad_norm, self.seed = reranker, max_grad_norm, seed

    def check(self, schemas: dict[str, pa.Schema]) -> None:
        for split, schema in schemas.items():
            missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
            if missing:
                raise ValueError(f"reranker {split} input lacks columns {missing}: the reranker trains on the mining "
                                 f"job's output (JUDGED_SCHEMA, jobs/mine.py), not on raw pairs")
        if self.cfg.listwise_size < 1:
            raise ValueError(f"reranker.listwise_size={self.cfg.listwise_size}: the list needs a negative (≥ 1)")
        if self.cfg.kind == "generative" and self.cfg.listwise_size + 1 > MAX_LIST_SIZE:
            raise ValueError(f"reranker.listwise_size={self.cfg.listwise_size}: a generative reranker's list "
                             f"holds at most {MAX_LIST_SIZE} candidates (single-digit slots); use ≤ {MAX_LIST_SIZE - 1}")

    def build(self, seed: int) -> tuple[Reranker, RerankerLoss]:
        model = build_reranker(self.cfg, seed=seed)
        if isinstance(model, CrossEncoderReranker) and not self.cfg.train_towers:
            for param in model.encoder.parameters():
                param.requires_grad = False
        return model, RerankerLoss(self.cfg.pairwise_weight, self.cfg.listwise_weight)

    def collate(self, model: Reranker, rows: dict[str, np.ndarray], epoch: int) -> RerankerBatch:
        return collate_reranker(rows, self.cfg.listwise_size, epoch, self.seed)

    def step(self, model: Reranker, loss_fn: RerankerLoss, batch: RerankerBatch, optimizer) -> dict[str, float]:
        model.train()
        terms = loss_fn(model, batch)
        backward(optimizer, terms["loss"])
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer_step(optimizer, params, self.max_grad_norm)
        return {name: float(value.detach().float()) for name, value in terms.items()}

    def evaluate(self, model: Reranker, val_rows: dict[str, np.ndarray]) -> dict[str, float]:
        """Pairwise and listwise accuracy on held-out mined rows (epoch 0's slots), prefixed `val_`."""
        batch = collate_reranker(val_rows, self.cfg.listwise_size, epoch=0, seed=self.seed)
        return {f"val_{k}": v for k, v in reranker_accuracy(model, batch).items()}

    def export(self, model: Reranker, out_dir: Path) -> None:
        model.save_pretrained(out_dir)


def training_section(reranker: RerankerConfig, train: TrainConfig, output: str) -> TrainConfig:
    """The train section the shared loop reads for a reranker: `lr`, `steps`, `batch_size` from `reranker.*`, the
    export folder `output`; no GradCache nor LoRA (they are the embedder's)."""
    return train.model_copy(update={"lr": reranker.lr, "steps": reranker.steps, "batch_size": reranker.batch_size,
                                    "output": output, "gradcache_chunk": None, "lora": False})
