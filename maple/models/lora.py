"""Which parameters of an embedder train: LoRA / DoRA adapters through peft, or a choice of a dual encoder's towers.

Each family names its own adapter targets (`Embedder.lora_targets`) and, for dual encoders, its towers
(`DualEncoder.towers`), so this module holds no per-family knowledge.
"""

from __future__ import annotations

from maple.models.embedder import Embedder


def apply_lora(embedder: Embedder, rank: int, alpha: float, dora: bool) -> None:
    """Wrap `embedder.model` with peft LoRA (DoRA when `dora`) adapters on the family's targets; only they train."""
    from peft import LoraConfig, get_peft_model

    if not embedder.lora_targets:
        raise ValueError(f"model.family={embedder.family} names no LoRA targets; use train.lora=false")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_dora=dora,
                        target_modules=list(embedder.lora_targets))
    embedder.model = get_peft_model(embedder.model, config)


def merge_lora(embedder: Embedder) -> Embedder:
    """Fold LoRA adapters into the base weights, so the export is a plain checkpoint of the family."""
    if hasattr(embedder.model, "merge_and_unload"):
        embedder.model = embedder.model.merge_and_unload()
    return embedder


def has_towers(embedder: Embedder) -> bool:
    return hasattr(embedder, "towers")


def select_trainable(embedder: Embedder, trainable: str) -> None:
    """Freeze all but the chosen towers of a dual encoder: "all" (both towers), "text", "image", "projections".

    The model's own logit scale stays frozen either way: `MapleLoss` owns the temperature."""
    towers = embedder.towers
    prefixes = towers["text"] + towers["image"] if trainable == "all" else towers[trainable]
    for name, param in embedder.model.named_parameters():
        param.requires_grad = name.startswith(prefixes)
