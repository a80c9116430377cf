"""Dual encoders (CLIP, SigLIP) through transformers, behind the `Embedder` interface."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
)

from maple.models.checkpoint import save_hf_parts
from maple.models.config import ModelConfig
from maple.models.embedder import MANIFEST, Embedder, normalise
from maple.models.manifest import read_manifest
from maple.models.tokenizer import build_word_tokenizer

# family -> (model class, config class, image processor). The Pil image processors: no torchvision needed.
FAMILIES = {
    "clip": (CLIPModel, CLIPConfig, CLIPImageProcessorPil),
    "siglip": (SiglipModel, SiglipConfig, SiglipImageProcessorPil),
}
CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]
# Parameter-name prefixes of each tower inside CLIPModel / SiglipModel, for train.trainable.
TOWERS = {
    "clip": {"text": ("text_model.", "text_projection."), "image": ("vision_model.", "visual_projection."),
             "projections": ("text_projection.", "visual_projection.")},
    "siglip": {"text": ("text_model.",), "image": ("vision_model.",),
               "projections": ("text_model.head.", "vision_model.head.")},
}


class DualEncoder(Embedder):
    """Separate image and text towers with projections into one space (CLIPModel / SiglipModel)."""

    family = "clip"
    lora_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]  # the towers' attention projections (peft)

    def __init__(self, model: CLIPModel | SiglipModel, tokenizer, image_processor, family: str,
                 max_text_tokens: int = 64):
        super().__init__()
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.family = family  # type: ignore[misc]  # instance-level: one class serves both families
        self.max_text_tokens = max_text_tokens

    @property
    def towers(self) -> dict[str, tuple[str, ...]]:
        """Parameter-name prefixes of "text", "image" and "projections" in `self.model` (`train.trainable`)."""
        return TOWERS[self.family]

    @property
    def embedding_dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size

    # --- inputs ---
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # SigLIP was trained with max-length padding and pools the last position: pad as it expects.
        padding = "max_length" if self.family == "siglip" else True
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]}

    # --- embeddings ---
    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask} if self.family == "clip" else {}
        return normalise(self.model.get_text_features(input_ids=input_ids, **kwargs).pooler_output)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return normalise(self.model.get_image_features(pixel_values=pixel_values).pooler_output)

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: ModelConfig) -> "DualEncoder":
        """A randomly initialised twin with the world's word-level tokenizer; builds offline in milliseconds."""
        model_cls, config_cls, processor_cls = FAMILIES[cfg.family]
        t = cfg.tiny
        tokenizer = build_word_tokenizer(max_length=cfg.max_text_tokens)
        tower = dict(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                     num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads)
        text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=cfg.max_text_tokens,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
        vision = dict(tower, image_size=cfg.image_size, patch_size=t.patch_size)
        if cfg.family == "clip":
            config = config_cls(text_config=text, vision_config=vision, projection_dim=t.embed_dim)
        else:
            config = config_cls(text_config=dict(text, projection_size=t.hidden_size), vision_config=vision)
        size = {"height": cfg.image_size, "width": cfg.image_size}
        processor = (processor_cls(size={"shortest_edge": cfg.image_size}, crop_size=size, image_mean=CLIP_MEAN,
                                   image_std=CLIP_STD) if cfg.family == "clip" else processor_cls(size=size))
        return cls(model_cls(config), tokenizer, processor, cfg.family, cfg.max_text_tokens)

    def manifest(self) -> dict:
        return {"family": self.family, "max_text_tokens": self.max_text_tokens}

    def save_pretrained(self, path: str | Path) -> None:
        save_hf_parts(path, self.model, self.tokenizer, self.image_processor)
        self._write_manifest(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig | None = None) -> "DualEncoder":
        """A maple dual-encoder directory, or a CLIP / SigLIP checkpoint by name or path (family from `cfg`)."""
        manifest = read_manifest(path, MANIFEST)
        if manifest.get("family", "clip") not in FAMILIES:
            raise ValueError(f"{path} holds a maple {manifest['family']!r} model, not a dual encoder (CLIP / SigLIP)")
        family = manifest.get("family") or (cfg.family if cfg else "clip")
        max_tokens = manifest.get("max_text_tokens") or (cfg.max_text_tokens if cfg else 64)
        remote = bool(cfg and cfg.trust_remote_code)
        model_cls, _, processor_cls = FAMILIES[family]
        model = model_cls.from_pretrained(path, trust_remote_code=remote)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        return cls(model, tokenizer, processor_cls.from_pretrained(path), family, max_tokens)
