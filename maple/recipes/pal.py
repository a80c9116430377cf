"""The PAL recipe: PAL's anchors trained from cached token features. The plain step (no Ray), an in-process loop,
`PalTask` for the shared Ray Train + DeepSpeed loop (`maple.train.loop.run_training`), and zero-shot evaluation
from the cache.

Only the anchors train: the model the trainer sees is the `AnchorHead` (2·K anchors), fed by the feature cache
(`maple.data.features`, written by `maple.stages.features`), so the frozen encoders get neither gradients nor
optimizer state nor checkpoint space. `export` joins the trained anchors to the cache's encoders into a servable `AnchorAligner` directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from maple.data.features import (
    FeatureTensors,
    all_caption_features,
    collate_features,
    encoders_dir,
    image_features,
    read_features,
)
from maple.data.schema import FEATURES_SCHEMA
from maple.data.synth import Scene
from maple.eval.metrics import metric_name, retrieval_metrics
from maple.eval.zero_shot import BACKGROUND_PROMPT, class_prompts, zero_shot_metrics
from maple.losses.anchor import pal_loss
from maple.models.anchor import AnchorAligner, AnchorHead, LinearProjectionHead
from maple.models.config import PalConfig
from maple.train.task import TrainTask


class PalLoss(nn.Module):
    """`pal_loss` as a module (the trainer holds model + loss in one DeepSpeed engine); no parameters."""

    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return pal_loss(image, text, self.tau)


def pal_step(head: nn.Module, loss_fn: nn.Module, batch: dict[str, torch.Tensor], optimizer) -> dict[str, float]:
    """One optimisation step on a collated batch (`collate_features`); `optimizer` is a torch optimizer or a
    DeepSpeed engine (anything with `.backward(loss)`/`.step()`). Returns {"loss": float}."""
    device = next(head.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    image = head.embed_image_tokens(batch["image_tokens"], batch["image_mask"])
    text = head.embed_text_tokens(batch["text_tokens"], batch["text_mask"])
    loss = loss_fn(image, text)
    if hasattr(optimizer, "backward"):  # DeepSpeed engine
        optimizer.backward(loss)
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"loss": float(loss.detach())}


def anchor_seed_tokens(table: pa.Table, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Real token features of the first `rows` cached rows, flattened: (N·n, d_x) image and (Σm, d_y) text tokens."""
    part = table.slice(0, rows)
    image = torch.from_numpy(image_features(part)).flatten(0, 1)
    text = torch.from_numpy(np.concatenate(all_caption_features(part)[0]))
    return image, text


def build_head(kind: str, table: pa.Table, num_anchors: int, tau_pool: float, seed: int,
               anchor_init: str = "tokens") -> nn.Module:
    """A fresh head over the cached features' dimensions: "pal" (`AnchorHead`) or "linear" (the baseline)."""
    image, text = anchor_seed_tokens(table)
    torch.manual_seed(seed)
    if kind == "linear":
        return LinearProjectionHead(image.shape[1], text.shape[1], num_anchors)
    head = AnchorHead(image.shape[1], text.shape[1], num_anchors, tau_pool)
    if anchor_init == "tokens":
        head.init_from_tokens(image, text, seed)
    return head


def train_head(head: nn.Module, table: pa.Table | FeatureTensors, steps: int, batch_size: int, lr: float,
               tau: float, seed: int, weight_decay: float = 0.0) -> list[float]:
    """The in-process loop (study, benchmark, notebooks): `steps` AdamW steps on random batches of cached rows,
    each row's caption chosen per epoch. Returns the loss per step."""
    features = table if isinstance(table, FeatureTensors) else FeatureTensors(table)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    loss_fn, losses, n = PalLoss(tau), [], len(features)
    batch_size = min(batch_size, n)
    order, cursor, epoch = torch.randperm(n, generator=g), 0, 0
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor, epoch = torch.randperm(n, generator=g), 0, epoch + 1
        batch = features.batch(order[cursor:cursor + batch_size], epoch, seed)
        cursor += batch_size
        losses.append(pal_step(head, loss_fn, batch, optimizer)["loss"])
    return losses


@torch.no_grad()
def retrieval_from_features(head: nn.Module, table: pa.Table | FeatureTensors, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways of a head on a cached split, every caption of every image in the gallery."""
    f = table if isinstance(table, FeatureTensors) else FeatureTensors(table)
    images = torch.cat([head.embed_image_tokens(f.image[b:b + 256].float()) for b in range(0, len(f), 256)])
    texts = torch.cat([head.embed_text_tokens(f.text[b:b + 256].float(), f.text_mask[b:b + 256])
                       for b in range(0, len(f.text), 256)])
    return retrieval_metrics(images.numpy(), texts.numpy(), f.caption_owner.numpy(), ks)


def export_aligner(head: AnchorHead, cache_dir: str | Path, out_dir: str | Path) -> Path:
    """The cache's frozen encoders + the trained anchors, saved as a servable `AnchorAligner` directory."""
    aligner = AnchorAligner.from_pretrained(encoders_dir(cache_dir))
    if aligner.head.image_anchors.shape != head.image_anchors.shape:
        raise ValueError(f"trained anchors {tuple(head.image_anchors.shape)} do not match the encoders in "
                         f"{encoders_dir(cache_dir)} ({tuple(aligner.head.image_anchors.shape)}); "
                         "model.pal.num_anchors must equal the value the cache's encoders were saved with")
    aligner.head.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    aligner.save_pretrained(out_dir)
    return Path(out_dir)


def feature_cache_dir(pal: PalConfig, output_dir: str | Path) -> Path:
    """model.pal.feature_cache, else <run.output_dir>/pal/features."""
    return Path(pal.feature_cache or Path(output_dir) / "pal" / "features")


class PalTask(TrainTask):
    """PAL for `run_training`: the trainable module is the `AnchorHead`; data are cached FEATURES_SCHEMA rows.
    `cache_dir` must be absolute where workers run elsewhere (their working directory differs)."""

    name = "pal"

    def __init__(self, pal: PalConfig, cache_dir: str | Path, seed: int = 0):
        self.pal, self.cache_dir, self.seed = pal, str(cache_dir), seed

    def check(self, schemas: dict[str, pa.Schema]) -> None:
        for split, schema in schemas.items():
            missing = [f.name for f in FEATURES_SCHEMA if f.name not in schema.names and f.name != "annotation"]
            if missing:
                raise ValueError(f"PAL trains on cached token features, but the {split} dataset lacks {missing}; "
                                 "build the cache first (python -m jobs.pal does, see maple.stages.features)")

    def build(self, seed: int) -> tuple[nn.Module, nn.Module]:
        pal = self.pal
        table = read_features(self.cache_dir, "train", limit=256)
        return build_head("pal", table, pal.num_anchors, pal.tau_pool, seed, pal.anchor_init), PalLoss(pal.tau)

    def collate(self, model: nn.Module, rows: dict[str, np.ndarray], epoch: int) -> Any:
        return collate_features(rows, epoch, self.seed)

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: Any, optimizer) -> dict[str, float]:
        return pal_step(model, loss_fn, batch, optimizer)

    def evaluate(self, model: nn.Module, val_rows: dict[str, np.ndarray]) -> dict[str, float]:
        table = pa.Table.from_pydict({f.name: list(val_rows[f.name]) for f in FEATURES_SCHEMA if f.name in val_rows})
        metrics = retrieval_from_features(model, table)
        return {metric_name(f"val_{k}"): v for k, v in metrics.items()}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        export_aligner(model, self.cache_dir, out_dir)


# --- zero-shot evaluation from cached features ----------------------------------------------------------------------


@torch.no_grad()
def prompt_token_features(aligner: AnchorAligner, prompts: list[str]) -> list[torch.Tensor]:
    """Each prompt's real-token features (m_c, d_y) from the aligner's frozen text encoder."""
    hidden, mask = aligner.text_tokens(**aligner.tokenize(prompts))
    return [h[m.bool()] for h, m in zip(hidden, mask)]


def zero_shot_from_cache(head: nn.Module, features: FeatureTensors, encoders: AnchorAligner, classes: list[str],
                         image_size: int, attribute: str = "shape") -> dict[str, float]:
    """Zero-shot classification accuracy and segmentation mIoU of a head on a cached synthetic split."""
    if any(a is None for a in features.annotations):
        raise ValueError("zero-shot segmentation needs the synthetic world's scene annotations; this split has rows "
                         "without one")
    prompts = prompt_token_features(encoders, [BACKGROUND_PROMPT, *class_prompts(classes)])
    scenes = [Scene.from_json(a) for a in features.annotations]
    return zero_shot_metrics(head, features.image, prompts, scenes, classes, image_size, attribute)
