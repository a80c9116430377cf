"""What a training recipe contributes to the shared Ray Train + DeepSpeed loop (`maple.train.loop`).

`TrainTask` lists the recipe-specific parts; everything else (workers, DeepSpeed, data streaming, MLflow,
checkpoints, recovery, export and registration) is the loop's. `EmbedderTask` trains an `Embedder` with `MapleLoss`.
No Ray import here: a task's methods run inside the workers, and alone in tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch import nn

from maple.config import Config
from maple.data.images import decode_image
from maple.eval.metrics import retrieval_metrics
from maple.losses import MapleLoss
from maple.models.embedder import Embedder, build_embedder
from maple.train.data import check_columns, collate
from maple.train.step import train_step


class TrainTask(ABC):
    """The recipe-specific parts of a training run. Subclass and override; defaults fit any nn.Module pair."""

    name = "train"  # MLflow tag `maple.job`; also the default registry name suffix

    def check(self, cfg: Config, schemas: dict[str, pa.Schema]) -> None:
        """Driver side, before any worker starts: raise ValueError for inputs the config cannot train on."""

    @abstractmethod
    def build(self, cfg: Config, seed: int) -> tuple[nn.Module, nn.Module]:
        """(model, loss_fn), identical on every worker for the same seed. The loss's parameters train too."""

    def trainable_parameters(self, model: nn.Module, loss_fn: nn.Module) -> list[nn.Parameter]:
        return [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]

    @abstractmethod
    def collate(self, model: nn.Module, rows: dict[str, np.ndarray], epoch: int, cfg: Config) -> Any:
        """One worker's micro-batch from Parquet rows (Ray Data numpy batch)."""

    @abstractmethod
    def step(self, model: nn.Module, loss_fn: nn.Module, batch: Any, optimizer: Any, cfg: Config) -> dict[str, float]:
        """One optimisation step (`optimizer` is the DeepSpeed engine in the loop); the loss terms as floats."""

    def evaluate(self, model: nn.Module, val_rows: dict[str, np.ndarray], cfg: Config) -> dict[str, float]:
        """Metrics on the whole val split (MLflow names: letters, digits, _ . - / only)."""
        return {}

    @abstractmethod
    def export(self, model: nn.Module, out_dir: Path, cfg: Config) -> None:
        """Write the final weights (a fully materialised model: ZeRO-3 parameters gathered) to out_dir."""

    @abstractmethod
    def register(self, out_dir: Path, name: str) -> str:
        """Register an exported model in the MLflow registry (inside the run); returns its `models:/` URI."""

    def after_step(self, step: int, rank: int) -> None:
        """Called on every rank after each step (e.g. a recipe's own logging)."""


# --- the embedder ----------------------------------------------------------------------------------------------------

# Parameter-name prefixes of each tower inside CLIPModel / SiglipModel (`Embedder.model`), for train.trainable.
_TOWERS = {
    "clip": {"text": ("text_model.", "text_projection."), "image": ("vision_model.", "visual_projection."),
             "projections": ("text_projection.", "visual_projection.")},
    "siglip": {"text": ("text_model.",), "image": ("vision_model.",),
               "projections": ("text_model.head.", "vision_model.head.")},
}
# Attention projections of CLIP / SigLIP towers for LoRA (the MLLM's are maple.models.mllm.LORA_TARGET_MODULES).
DUAL_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def select_trainable(embedder: Embedder, trainable: str) -> None:
    """Freeze all but the chosen towers of a dual encoder: "all" (both towers), "text", "image", "projections".

    The model's own logit scale stays frozen either way: `MapleLoss` owns the temperature."""
    towers = _TOWERS[embedder.family]
    prefixes = towers["text"] + towers["image"] if trainable == "all" else towers[trainable]
    for name, param in embedder.model.named_parameters():
        param.requires_grad = name.startswith(prefixes)


def lora_targets(embedder: Embedder) -> list[str]:
    if embedder.family in _TOWERS:
        return DUAL_ENCODER_LORA_TARGETS
    from maple.models.mllm import LORA_TARGET_MODULES

    return LORA_TARGET_MODULES


def apply_lora(embedder: Embedder, rank: int, alpha: float, dora: bool) -> None:
    """Wrap `embedder.model` with peft LoRA (DoRA when dora) adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_dora=dora,
                        target_modules=lora_targets(embedder))
    embedder.model = get_peft_model(embedder.model, config)


def merge_lora(embedder: Embedder) -> Embedder:
    """Fold LoRA adapters into the base weights, so the export is a plain checkpoint of the family."""
    if hasattr(embedder.model, "merge_and_unload"):
        embedder.model = embedder.model.merge_and_unload()
    return embedder


class EmbedderTask(TrainTask):
    """Trains `build_embedder(cfg.model)` with `MapleLoss(cfg.train.loss)` on pairs or the mining job's rows."""

    name = "train"

    def check(self, cfg: Config, schemas: dict[str, pa.Schema]) -> None:
        check_columns(schemas["train"], cfg.train.loss, "train input")
        if "val" in schemas:
            check_columns(schemas["val"], cfg.train.loss.model_copy(update={"rpa": "none", "kl_weight": 0.0,
                                                                            "hard_negatives": False}), "val input")
        if cfg.model.family not in _TOWERS and cfg.train.trainable != "all" and not cfg.train.lora:
            raise ValueError(f"train.trainable={cfg.train.trainable} chooses towers of a dual encoder; model.family="
                             f"{cfg.model.family} has none: use train.trainable=all or train.lora=true")

    def build(self, cfg: Config, seed: int) -> tuple[Embedder, MapleLoss]:
        model = build_embedder(cfg.model, seed=seed)
        if cfg.train.lora:
            apply_lora(model, cfg.train.lora_rank, cfg.train.lora_alpha, cfg.train.lora_dora)
        elif model.family in _TOWERS:
            select_trainable(model, cfg.train.trainable)
        return model, MapleLoss(cfg.train.loss)

    def collate(self, model: Embedder, rows: dict[str, np.ndarray], epoch: int, cfg: Config):
        kind = "judged" if "direction" in rows else "pairs"
        return collate(model, rows, kind, cfg.train.loss, epoch, cfg.run.seed)

    def step(self, model, loss_fn, batch, optimizer, cfg: Config) -> dict[str, float]:
        # Under DeepSpeed the engine clips (its gradient_clipping); alone, train_step clips.
        return train_step(model, loss_fn, batch, optimizer, cfg.train.gradcache_chunk, cfg.train.max_grad_norm)

    def evaluate(self, model: Embedder, val_rows: dict[str, np.ndarray], cfg: Config) -> dict[str, float]:
        """Recall@K both ways on the val pairs (every caption of every image), prefixed `val_`."""
        images = [decode_image(bytes(b)) for b in val_rows["image"]]
        captions = [[str(c) for c in caps] for caps in val_rows["captions"]]
        text_to_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
        image_emb = model.encode_images(images, cfg.eval.batch_size).numpy()
        text_emb = model.encode_texts([c for caps in captions for c in caps], cfg.eval.batch_size).numpy()
        metrics = retrieval_metrics(image_emb, text_emb, text_to_image, cfg.eval.recall_ks)
        return {f"val_{k.replace('@', '_at_')}": v for k, v in metrics.items()}

    def export(self, model: Embedder, out_dir: Path, cfg: Config) -> None:
        merge_lora(model).save_pretrained(out_dir)

    def register(self, out_dir: Path, name: str) -> str:
        from maple.tracking import register_embedder

        return register_embedder(out_dir, name)
