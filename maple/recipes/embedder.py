"""The embedder recipe: an `Embedder` (dual encoder or MLLM, optionally LoRA / DoRA) trained with `MapleLoss` on plain
pairs (InfoNCE) or on the mining job's judged rows (InfoNCE + RPA + soft labels), through `maple.train.loop`.

    task = EmbedderTask(cfg.model, cfg.train, cfg.eval, seed=cfg.run.seed)
    result = run_training(cfg.train, cfg.run, task, {"train": ds, "val": val}, run_name, mlflow_target)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from maple.data.images import decode_image
from maple.eval.config import EvalConfig
from maple.eval.metrics import metric_name, retrieval_metrics
from maple.losses.combined import MapleLoss
from maple.models.config import ModelConfig
from maple.models.embedder import Embedder
from maple.models.families import build_embedder
from maple.models.lora import apply_lora, has_towers, merge_lora, select_trainable
from maple.train.batch import EmbedderBatch, check_columns, collate
from maple.train.config import TrainConfig
from maple.train.step import train_step
from maple.train.task import TrainTask


class EmbedderTask(TrainTask):
    """Trains `build_embedder(model)` with `MapleLoss(train.loss)` on pairs or the mining job's rows."""

    name = "train"

    def __init__(self, model: ModelConfig, train: TrainConfig, eval_cfg: EvalConfig | None = None, seed: int = 0):
        self.model_cfg, self.train_cfg, self.eval_cfg, self.seed = model, train, eval_cfg or EvalConfig(), seed

    def check(self, schemas: dict[str, pa.Schema]) -> None:
        loss = self.train_cfg.loss
        check_columns(schemas["train"], loss, "train input")
        if "val" in schemas:
            check_columns(schemas["val"], loss.model_copy(update={"rpa": "none", "kl_weight": 0.0,
                                                                  "hard_negatives": False}), "val input")
        family = self.model_cfg.family
        if family not in ("clip", "siglip") and self.train_cfg.trainable != "all" and not self.train_cfg.lora:
            raise ValueError(f"train.trainable={self.train_cfg.trainable} chooses towers of a dual encoder; "
                             f"model.family={family} has none: use train.trainable=all or train.lora=true")

    def build(self, seed: int) -> tuple[Embedder, MapleLoss]:
        model = build_embedder(self.model_cfg, seed=seed)
        tc = self.train_cfg
        if tc.lora:
            apply_lora(model, tc.lora_rank, tc.lora_alpha, tc.lora_dora)
        elif has_towers(model):
            select_trainable(model, tc.trainable)
        return model, MapleLoss(tc.loss)

    def collate(self, model: Embedder, rows: dict[str, np.ndarray], epoch: int) -> EmbedderBatch:
        kind = "judged" if "direction" in rows else "pairs"
        return collate(model, rows, kind, self.train_cfg.loss, epoch, self.seed)

    def step(self, model, loss_fn, batch, optimizer) -> dict[str, float]:
        # Under DeepSpeed the engine clips (its gradient_clipping); alone, train_step clips.
        return train_step(model, loss_fn, batch, optimizer, self.train_cfg.gradcache_chunk,
                          self.train_cfg.max_grad_norm)

    def evaluate(self, model: Embedder, val_rows: dict[str, np.ndarray]) -> dict[str, float]:
        """Recall@K both ways on the val pairs (every caption of every image), prefixed `val_`."""
        images = [decode_image(bytes(b)) for b in val_rows["image"]]
        captions = [[str(c) for c in caps] for caps in val_rows["captions"]]
        text_to_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
        batch_size = self.eval_cfg.batch_size
        image_emb = model.encode_images(images, batch_size).numpy()
        text_emb = model.encode_texts([c for caps in captions for c in caps], batch_size).numpy()
        metrics = retrieval_metrics(image_emb, text_emb, text_to_image, self.eval_cfg.recall_ks)
        return {metric_name(f"val_{k}"): v for k, v in metrics.items()}

    def export(self, model: Embedder, out_dir: Path) -> None:
        merge_lora(model).save_pretrained(out_dir)
