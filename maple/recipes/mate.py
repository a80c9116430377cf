"""The MATE recipe: its training stages as one task with a stage switch, for the one Ray Train + DeepSpeed loop
(`maple.train`).

| stage       | source (trainable path)                   | target (frozen LLM vector, precomputed)            |
|-------------|-------------------------------------------|----------------------------------------------------|
| "captions"  | P(VLM-text(caption)), VLM frozen          | LLM(caption)                                       |
| "documents" | P(VLM-text(caption)), VLM frozen          | LLM(long caption) or LLM(document), per row/epoch  |
| "images"    | P(VLM-image(x)), LoRA on the image encoder | LLM(caption(x))                                    |

Rows are LONG_TEXT_SCHEMA rows (`maple.data.long_text`) with the LLM vectors added as `caption_emb`,
`long_caption_emb` and `document_emb` (the target stage of `jobs/mate.py`: `EmbedColumns` over a saved
`MateEmbedder`, whose text side is the frozen LLM embedder). The loss is `maple.losses.mate.MateLoss`.

`collate` and `step` need no Ray: `stage_step(model, loss_fn, batch, optimizer)` is one optimisation step a notebook
can call and time.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from maple.data.images import decode_image
from maple.eval.metrics import metric_name
from maple.losses.mate import MateLoss
from maple.models.config import MateConfig
from maple.models.mate import MateEmbedder
from maple.train.step import backward, optimizer_step
from maple.train.task import TrainTask

Stage = Literal["captions", "documents", "images"]
STAGES: tuple[Stage, ...] = ("captions", "documents", "images")
TARGET_COLUMNS = ("caption_emb", "long_caption_emb", "document_emb")
REQUIRED = {"captions": ("caption", "caption_emb"), "documents": ("id", "caption", "long_caption_emb", "document_emb"),
            "images": ("image", "caption_emb")}


def stack(column) -> torch.Tensor:
    """A column of equal-length float arrays (Arrow list columns arrive as object arrays of arrays) -> (N, D)."""
    return torch.from_numpy(np.stack([np.asarray(v, dtype=np.float32) for v in column]))


def document_target_kind(row_id: str, epoch: int, seed: int) -> str:
    """Stage 1b pairs each caption with its long caption or its document, alternating by (row, epoch, seed)."""
    return ("long_caption_emb", "document_emb")[zlib.crc32(f"{seed}:{epoch}:{row_id}".encode()) % 2]


def collate_stage(model: MateEmbedder, rows: dict[str, np.ndarray], stage: Stage, epoch: int = 0, seed: int = 0
                  ) -> dict:
    """Rows -> {"vlm": VLM tokens (text stages) | "pixel_values": (N, 3, H, W) (images), "target": (N, D)}."""
    missing = [c for c in REQUIRED[stage] if c not in rows]
    if missing:
        raise ValueError(f"MATE stage {stage!r}: the rows lack columns {missing}; they come from the target stage of "
                         "jobs/mate.py (LONG_TEXT_SCHEMA + <text>_emb LLM vectors)")
    if stage == "images":
        images = [decode_image(bytes(data)) for data in rows["image"]]
        return {"pixel_values": model.preprocess(images)["pixel_values"], "target": stack(rows["caption_emb"])}
    if stage == "captions":
        target = stack(rows["caption_emb"])
    else:
        kinds = [document_target_kind(str(i), epoch, seed) for i in rows["id"]]
        target = torch.stack([stack(rows[kind][j:j + 1])[0] for j, kind in enumerate(kinds)])
    return {"vlm": model.vlm_tokenize([str(t) for t in rows["caption"]]), "target": target}


def stage_source(model: MateEmbedder, batch: dict) -> torch.Tensor:
    """(N, D) the projected source of the batch, before normalisation."""
    if "pixel_values" in batch:
        return model.project_images(batch["pixel_values"].to(model.device))
    return model.project_vlm_texts(**{k: v.to(model.device) for k, v in batch["vlm"].items()})


def stage_step(model: MateEmbedder, loss_fn: MateLoss, batch: dict, optimizer, max_grad_norm: float = 0.0
               ) -> dict[str, float]:
    """One optimisation step; `optimizer` is a torch optimizer or a DeepSpeed engine (`maple.train.step`'s
    `backward` / `optimizer_step`, shared with the embedder's step)."""
    model.train()
    terms = loss_fn(stage_source(model, batch), batch["target"].to(model.device))
    backward(optimizer, terms["loss"])
    optimizer_step(optimizer, [p for p in model.parameters() if p.requires_grad], max_grad_norm)
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def stage_metrics(model: MateEmbedder, rows: dict[str, np.ndarray], stage: Stage, batch_size: int = 64
                  ) -> dict[str, float]:
    """Recall@1 of source -> target among all given rows (the val split), for every target column present, named
    `val_<stage>_<text>_r_at_1` (MLflow metric names allow no "@")."""
    was_training = model.training
    model.eval()
    sources = []
    n = len(rows["caption_emb"])
    for i in range(0, n, batch_size):
        part = {k: v[i:i + batch_size] for k, v in rows.items()}
        sources.append(stage_source(model, collate_stage(model, part, "images" if stage == "images" else "captions")))
    model.train(was_training)
    source = torch.nn.functional.normalize(torch.cat(sources).float().cpu(), dim=-1)
    out = {}
    for column in TARGET_COLUMNS:
        if column in rows:
            sim = source @ torch.nn.functional.normalize(stack(rows[column]), dim=-1).T
            hits = (sim.argmax(1) == torch.arange(n)).float().mean()
            out[metric_name(f"val_{stage}_{column.removesuffix('_emb')}_r@1")] = float(hits)
    return out


class MateTask(TrainTask):
    """The `maple.train` task for one MATE stage; `init_dir` is the MateEmbedder that the stage starts from
    (the untrained model for "captions", the previous stage's export after)."""

    def __init__(self, stage: Stage, init_dir: str | Path, mate: MateConfig, seed: int = 0,
                 max_grad_norm: float = 1.0, eval_batch_size: int = 64):
        if stage not in STAGES:
            raise ValueError(f"unknown MATE stage {stage!r}; one of {STAGES}")
        self.stage, self.init_dir, self.mate = stage, str(init_dir), mate
        self.seed, self.max_grad_norm, self.eval_batch_size = seed, max_grad_norm, eval_batch_size
        self.name = f"mate-{stage}"

    def check(self, schemas: dict) -> None:
        for split, schema in schemas.items():
            missing = [c for c in REQUIRED[self.stage] if c not in schema.names]
            if missing:
                raise ValueError(f"MATE stage {self.stage!r}, {split} split: columns {missing} missing; run the "
                                 "target stage of jobs/mate.py first")

    def build(self, seed: int) -> tuple[MateEmbedder, MateLoss]:
        torch.manual_seed(seed)
        model = MateEmbedder.from_pretrained(self.init_dir)
        mate = self.mate
        if self.stage == "images":
            model.add_image_lora(mate.lora_rank, mate.lora_alpha, mate.lora_targets)
        else:
            model.projection.requires_grad_(True)
        return model, MateLoss(mate.temperature, mate.distance, mate.distance_weight)

    def collate(self, model: MateEmbedder, rows: dict[str, np.ndarray], epoch: int) -> dict:
        return collate_stage(model, rows, self.stage, epoch, self.seed)

    def step(self, model: MateEmbedder, loss_fn: MateLoss, batch: dict, optimizer) -> dict[str, float]:
        return stage_step(model, loss_fn, batch, optimizer, self.max_grad_norm)

    def evaluate(self, model: MateEmbedder, val_rows: dict[str, np.ndarray]) -> dict[str, float]:
        return stage_metrics(model, val_rows, self.stage, self.eval_batch_size)

    def export(self, model: MateEmbedder, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
