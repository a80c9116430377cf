"""What a training recipe contributes to the shared Ray Train + DeepSpeed loop (`maple.train.loop`).

`TrainTask` lists the recipe-specific parts; everything else (workers, DeepSpeed, data streaming, MLflow logging,
checkpoints, recovery, export) is the loop's. A task holds its own config sections, given when the recipe builds it,
so the loop never sees the whole config. The recipes (`maple.recipes.*`) subclass it. No Ray import here: a task's
methods run inside the workers, and alone in tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from torch import nn


class TrainTask(ABC):
    """The recipe-specific parts of a training run. Subclass and override; defaults fit any nn.Module pair."""

    name = "train"  # MLflow tag `maple.job`
    kind: Literal["embedder", "reranker"] = "embedder"  # what `export` writes (how the registry wraps it)
    # The job's progress display (`maple.console.Stage.advance`), called after each step. It lives on the driver:
    # it ticks where the loop runs in the driver's process (Ray Train's local mode, train.num_workers=0) and stays
    # behind when the task is pickled to workers (`__getstate__`).
    on_step: Callable[[], None] | None = None

    def check(self, schemas: dict[str, pa.Schema]) -> None:
        """Driver side, before any worker starts: raise ValueError for inputs the task cannot train on."""

    @abstractmethod
    def build(self, seed: int) -> tuple[nn.Module, nn.Module]:
        """(model, loss_fn), identical on every worker for the same seed. The loss's parameters train too."""

    def trainable_parameters(self, model: nn.Module, loss_fn: nn.Module) -> list[nn.Parameter]:
        return [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]

    @abstractmethod
    def collate(self, model: nn.Module, rows: dict[str, np.ndarray], epoch: int) -> Any:
        """One worker's micro-batch from Parquet rows (Ray Data numpy batch)."""

    @abstractmethod
    def step(self, model: nn.Module, loss_fn: nn.Module, batch: Any, optimizer: Any) -> dict[str, float]:
        """One optimisation step (`optimizer` is the DeepSpeed engine in the loop); the loss terms as floats."""

    def evaluate(self, model: nn.Module, val_rows: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics on the whole val split (MLflow names: `maple.eval.metrics.metric_name`)."""
        return {}

    @abstractmethod
    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write the final weights (a fully materialised model: ZeRO-3 parameters gathered) to out_dir."""

    def after_step(self, step: int, rank: int) -> None:
        """Called on every rank after each step (e.g. a recipe's own logging); a subclass that overrides it calls
        this one too."""
        if self.on_step is not None and rank == 0:
            self.on_step()

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "on_step"}
