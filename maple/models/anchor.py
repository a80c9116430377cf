"""PAL: two frozen unimodal encoders aligned post hoc by K learnable anchors per modality (ARCHITECTURE.md).

- `AnchorHead`: the only trainable part, the anchors A_x (K, d_x) and A_y (K, d_y); maps token features (from the
  encoders or from the feature cache) to L2-normalised K-vectors (`maple.losses.anchor`).
- `LinearProjectionHead`: the baseline PAL is compared with, a learned linear projection of the mean-pooled frozen
  features of each modality into a K-d space (the same number of parameters as the anchors, up to biases).
- `AnchorAligner`: an `Embedder` = frozen image encoder (a ViT's patch tokens) + frozen text encoder (`TextTower`
  token states) + `AnchorHead`, so the evaluation job and the server use it like any other embedder.

A saved aligner is a directory: `maple_embedder.json`, `anchors.safetensors`, `image_encoder/` (weights + image
processor) and `text_encoder/` (weights + tokenizer): self-contained, loadable where the encoders' hub is not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoImageProcessor, AutoModel, ViTConfig, ViTImageProcessorPil, ViTModel

from maple.losses.anchor import anchor_embedding, relative_representation
from maple.models.checkpoint import save_hf_parts
from maple.models.config import ModelConfig
from maple.models.embedder import MANIFEST, Embedder, normalise
from maple.models.text_tower import TextTower

ANCHORS_FILE = "anchors.safetensors"


class AnchorHead(nn.Module):
    """K anchors per modality; token features -> pooled relative representations (B, K), L2-normalised."""

    def __init__(self, image_dim: int, text_dim: int, num_anchors: int, tau_pool: float):
        super().__init__()
        self.image_anchors = nn.Parameter(torch.randn(num_anchors, image_dim))
        self.text_anchors = nn.Parameter(torch.randn(num_anchors, text_dim))
        self.tau_pool = tau_pool

    @property
    def num_anchors(self) -> int:
        return self.image_anchors.shape[0]

    def embed_image_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, n, d_x), mask (B, n) -> (B, K)."""
        return anchor_embedding(tokens.float(), mask, self.image_anchors, self.tau_pool)

    def embed_text_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, m, d_y), mask (B, m) -> (B, K)."""
        return anchor_embedding(tokens.float(), mask, self.text_anchors, self.tau_pool)

    def patch_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each patch's own relative representation, L2-normalised: (B, n, d_x) -> (B, n, K) (for segmentation)."""
        return F.normalize(relative_representation(tokens.float(), self.image_anchors), dim=-1)

    @torch.no_grad()
    def init_from_tokens(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, seed: int = 0) -> None:
        """Anchors set to K token features drawn at random (image_tokens (N, d_x), text_tokens (M, d_y) real tokens).

        Why: frozen encoders' features are anisotropic (they fill a narrow cone), so random Gaussian anchors see every
        token at nearly the same cosine and the softmax pooling starts flat; anchors drawn from the data start inside
        the cone, where the cosines differ between tokens.
        """
        g = torch.Generator().manual_seed(seed)
        for anchors, pool in ((self.image_anchors, image_tokens), (self.text_anchors, text_tokens)):
            if len(pool) == 0:
                raise ValueError("init_from_tokens: no token features to draw anchors from")
            rows = torch.randint(len(pool), (anchors.shape[0],), generator=g)
            drawn = pool[rows].float() + 1e-3 * torch.randn(anchors.shape, generator=g)
            anchors.copy_(F.normalize(drawn, dim=-1))  # unit norm: the optimizer's lr is then scale-free


class LinearProjectionHead(nn.Module):
    """The baseline: W_x · mean(patches), W_y · mean(real tokens), each L2-normalised, in a `dim`-d space."""

    def __init__(self, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)

    @staticmethod
    def _mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return tokens.float().mean(1)
        m = mask.to(torch.float32)[..., None]
        return (tokens.float() * m).sum(1) / m.sum(1).clamp_min(1.0)

    def embed_image_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return normalise(self.image_proj(self._mean(tokens, mask)))

    def embed_text_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return normalise(self.text_proj(self._mean(tokens, mask)))

    def patch_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each patch projected on its own: (B, n, d_x) -> (B, n, dim), L2-normalised."""
        return normalise(self.image_proj(tokens.float()))


def tiny_vit(cfg: ModelConfig) -> tuple[ViTModel, ViTImageProcessorPil]:
    """A randomly initialised ViT of `cfg.tiny` sizes and its PIL image processor (no torchvision, no download)."""
    t = cfg.tiny
    config = ViTConfig(hidden_size=t.hidden_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                       intermediate_size=t.intermediate_size, image_size=cfg.image_size, patch_size=t.patch_size)
    size = {"height": cfg.image_size, "width": cfg.image_size}
    return ViTModel(config), ViTImageProcessorPil(size=size)


class AnchorAligner(Embedder):
    """Frozen image encoder + frozen text encoder + trainable `AnchorHead`; embeddings are PAL's K-vectors."""

    family = "pal"

    def __init__(self, image_encoder: nn.Module, image_processor, text_tower: TextTower, head: AnchorHead,
                 tau: float = 0.07, image_prefix_tokens: int = 1, max_text_tokens: int = 64):
        super().__init__()
        self.image_encoder, self.image_processor, self.text_tower, self.head = (image_encoder, image_processor,
                                                                                text_tower, head)
        self.tau, self.image_prefix_tokens, self.max_text_tokens = tau, image_prefix_tokens, max_text_tokens
        for encoder in (self.image_encoder, self.text_tower):
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> "AnchorAligner":
        # The encoders stay in eval mode (no dropout): their features are frozen, and cached features must match.
        super().train(mode)
        self.image_encoder.eval()
        self.text_tower.eval()
        return self

    @property
    def embedding_dim(self) -> int:
        return self.head.num_anchors

    @property
    def image_dim(self) -> int:
        return self.image_encoder.config.hidden_size

    @property
    def text_dim(self) -> int:
        return self.text_tower.dim

    # --- inputs ---
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_tower.tokenize(texts, max_length=self.max_text_tokens)

    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        rgb = [im.convert("RGB") for im in images]
        return {"pixel_values": self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]}

    # --- frozen token features ---
    @torch.no_grad()
    def image_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (B, n, d_x) (CLS and registers dropped) and an all-ones mask (B, n)."""
        hidden = self.image_encoder(pixel_values=pixel_values).last_hidden_state[:, self.image_prefix_tokens:]
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    @torch.no_grad()
    def text_tokens(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-layer token states (B, m, d_y) and the real-token mask (B, m)."""
        return self.text_tower.token_states(**inputs)

    # --- embeddings (differentiable in the anchors only) ---
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head.embed_image_tokens(*self.image_tokens(pixel_values))

    def embed_texts(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head.embed_text_tokens(*self.text_tokens(**inputs))

    @torch.no_grad()
    def patch_vectors(self, images: list[Image.Image]) -> torch.Tensor:
        """Per-patch relative representations on the patch grid: (B, h, w, K) (zero-shot segmentation)."""
        pixel_values = self.preprocess(images)["pixel_values"].to(self.device)
        vectors = self.head.patch_vectors(self.image_tokens(pixel_values)[0])
        side = math.isqrt(vectors.shape[1])
        if side * side != vectors.shape[1]:
            raise ValueError(f"{vectors.shape[1]} patch tokens do not form a square grid; check "
                             f"model.pal.image_prefix_tokens ({self.image_prefix_tokens})")
        return vectors.reshape(len(images), side, side, -1).cpu()

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: ModelConfig) -> "AnchorAligner":
        """The untrained aligner: the configured encoders (a tiny random ViT when `model.pal.image_encoder` is None,
        the bundled all-MiniLM-L6-v2 when `model.pal.text_encoder` is None) and Gaussian anchors."""
        pal = cfg.pal
        if pal.image_encoder:
            image_encoder = AutoModel.from_pretrained(pal.image_encoder, trust_remote_code=cfg.trust_remote_code)
            processor = AutoImageProcessor.from_pretrained(pal.image_encoder, backend="pil")
        else:
            image_encoder, processor = tiny_vit(cfg)
        tower = TextTower(pal.text_encoder)
        head = AnchorHead(image_encoder.config.hidden_size, tower.dim, pal.num_anchors, pal.tau_pool)
        return cls(image_encoder, processor, tower, head, pal.tau, pal.image_prefix_tokens, cfg.max_text_tokens)

    def manifest(self) -> dict:
        return {"family": self.family, "num_anchors": self.head.num_anchors, "tau_pool": self.head.tau_pool,
                "tau": self.tau, "image_prefix_tokens": self.image_prefix_tokens,
                "max_text_tokens": self.max_text_tokens}

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        save_hf_parts(path / "image_encoder", self.image_encoder, image_processor=self.image_processor)
        self.text_tower.save_pretrained(path / "text_encoder")
        self.save_anchors(path)
        self._write_manifest(path)

    def save_anchors(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(Path(path) / ANCHORS_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig | None = None) -> "AnchorAligner":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path} has no {MANIFEST}: not a saved PAL aligner (AnchorAligner.save_pretrained "
                                    "writes one); to start from encoders, set model.pal.image_encoder/text_encoder")
        m = json.loads(manifest_path.read_text())
        image_encoder = AutoModel.from_pretrained(path / "image_encoder")
        processor = AutoImageProcessor.from_pretrained(path / "image_encoder", backend="pil")
        tower = TextTower(path / "text_encoder")
        anchors = load_file(str(path / ANCHORS_FILE))
        head = AnchorHead(image_encoder.config.hidden_size, tower.dim, m["num_anchors"], m["tau_pool"])
        head.load_state_dict(anchors)
        return cls(image_encoder, processor, tower, head, m["tau"], m["image_prefix_tokens"], m["max_text_tokens"])
