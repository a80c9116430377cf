"""MATE: a VLM's image encoder met with an LLM text embedder through a projection P (ARCHITECTURE.md, arXiv 2407.09541).

- Images: VLM image encoder (a CLIP `DualEncoder`, LoRA-adapted in stage 2) → its L2-normalised embedding → P →
  L2-normalised, in the LLM embedder's space.
- Texts of any length: the frozen LLM-side embedder (`TextTower`; E5-Mistral-class on a cluster, the bundled
  all-MiniLM-L6-v2 here). A text longer than the embedder's window is cut into windows and pooled
  (`TextTower.chunked_embed`): windows of at most `window` tokens (the embedder's own, 256 for MiniLM), consecutive
  windows sharing `chunk_overlap` tokens (default window // 8), each window embedded alone, the text's vector = the
  mean of its windows' vectors weighted by each window's count of text tokens, L2-normalised. A text that fits one
  window gets the embedder's plain sentence vector.
- Stage 1 sources: the VLM *text* encoder (truncated at its window, 77 tokens for CLIP) → P (`project_vlm_texts`);
  at inference the VLM text encoder is not used.

A saved MATE embedder is a directory: `maple_embedder.json`, `projection.safetensors`, `vlm/` (a maple dual-encoder
directory, LoRA merged) and `llm/` (weights + tokenizer + the window): self-contained, loadable without a hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from maple.models.config import ModelConfig
from maple.models.dual_encoder import DualEncoder
from maple.models.embedder import MANIFEST, Embedder, normalise
from maple.models.text_tower import TextTower

PROJECTION_FILE = "projection.safetensors"


class Projection(nn.Module):
    """P: VLM space (in_dim) → LLM space (out_dim); "linear", or "mlp" (2 layers, GELU): MATE's projection module."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp", hidden: int = 512):
        super().__init__()
        if kind == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim))
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        else:
            raise ValueError(f"unknown projection {kind!r}; model.mate.projection is 'linear' or 'mlp'")
        self.kind, self.in_dim, self.out_dim, self.hidden = kind, in_dim, out_dim, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MateEmbedder(Embedder):
    """VLM image encoder + P for images, frozen LLM embedder (chunked) for texts; one space, the LLM's."""

    family = "mate"

    def __init__(self, vlm: DualEncoder, llm: TextTower, projection: Projection, chunk_overlap: int | None = None):
        super().__init__()
        self.vlm, self.llm, self.projection = vlm, llm, projection
        self.chunk_overlap = chunk_overlap
        # MATE never trains the LLM side nor the VLM's base weights: stage 1 trains P, stage 2 P and LoRA adapters.
        self.llm.requires_grad_(False)
        self.vlm.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "MateEmbedder":
        super().train(mode)
        self.llm.eval()  # frozen targets: no dropout, the same vectors as at precompute time
        return self

    @property
    def embedding_dim(self) -> int:
        return self.llm.dim

    @property
    def window(self) -> int:
        return self.llm.window

    @property
    def overlap(self) -> int:
        return self.window // 8 if self.chunk_overlap is None else self.chunk_overlap

    # --- texts: the LLM side, any length ---
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Every text's windows (the rule of `TextTower.chunked_embed`), padded: input_ids/attention_mask (W, L) and
        `window_owner` (W,), the index of the text each window belongs to."""
        enc = self.llm.tokenizer(list(texts), truncation=True, max_length=self.window, stride=self.overlap,
                                 return_overflowing_tokens=True, padding=True, return_tensors="pt")
        owner = enc.pop("overflow_to_sample_mapping")
        return {**dict(enc), "window_owner": owner}

    def embed_texts(self, window_owner: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """(N, D): each text's windows embedded, pooled by text-token count, L2-normalised (= `chunked_embed`)."""
        vectors = self.llm.embed(**inputs)
        special = torch.tensor(self.llm.tokenizer.all_special_ids, device=vectors.device)
        weights = (inputs["attention_mask"].bool() & ~torch.isin(inputs["input_ids"], special)).sum(1).clamp_min(1)
        pooled = torch.zeros(int(window_owner.max()) + 1, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
        return normalise(pooled.index_add(0, window_owner, vectors * weights[:, None].to(vectors.dtype)))

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return self.llm.chunked_embed(list(texts), overlap=self.overlap, batch_size=batch_size).float().cpu()

    # --- images: VLM image encoder → P ---
    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        return self.vlm.preprocess([im.convert("RGB") for im in images])

    def project_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, D) P(VLM-image(x)) before normalisation (the stage-2 source; the "mse" distance reads raw outputs)."""
        return self.projection(self.vlm.embed_images(pixel_values))

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return normalise(self.project_images(pixel_values))

    # --- stage-1 sources: VLM text encoder (truncated at its window) → P ---
    def vlm_tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.vlm.tokenize(texts)

    def project_vlm_texts(self, **vlm_inputs: torch.Tensor) -> torch.Tensor:
        """(N, D) P(VLM-text(t)) before normalisation; the VLM text encoder stays frozen (no gradient into it)."""
        with torch.no_grad():
            source = self.vlm.embed_texts(**vlm_inputs)
        return self.projection(source)

    # --- stage 2: LoRA on the VLM image encoder ---
    def add_image_lora(self, rank: int = 8, alpha: int = 16, targets: list[str] | tuple[str, ...] = ("q_proj", "v_proj")
                       ) -> None:
        """Wrap the VLM's vision tower in peft LoRA adapters; afterwards exactly P and the adapters are trainable."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
        self.vlm.model.vision_model = get_peft_model(self.vlm.model.vision_model, config)
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("projection.") or "lora_" in name)

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the vision tower's weights (before export); a no-op without adapters."""
        from peft import PeftModel

        vision = self.vlm.model.vision_model
        if isinstance(vision, PeftModel):
            self.vlm.model.vision_model = vision.merge_and_unload()
            self.vlm.requires_grad_(False)

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: ModelConfig) -> "MateEmbedder":
        """The untrained MATE model: the VLM from `model.mate.vlm` (None: the tiny random CLIP twin with a
        `vlm_text_tokens` window), the LLM embedder from `model.mate.llm` (None: bundled MiniLM), a random P."""
        mate = cfg.mate
        vlm_cfg = cfg.model_copy(update={"family": "clip", "max_text_tokens": mate.vlm_text_tokens,
                                         "name_or_path": mate.vlm})
        # A dual encoder (CLIP) only: from_pretrained refuses a saved maple model of another family.
        vlm = DualEncoder.from_pretrained(mate.vlm, vlm_cfg) if mate.vlm else DualEncoder.tiny(vlm_cfg)
        llm = TextTower(mate.llm)
        projection = Projection(vlm.embedding_dim, llm.dim, mate.projection, mate.projection_hidden)
        return cls(vlm, llm, projection, mate.chunk_overlap)

    def manifest(self) -> dict:
        p = self.projection
        return {"family": self.family, "projection": p.kind, "in_dim": p.in_dim, "out_dim": p.out_dim,
                "hidden": p.hidden, "chunk_overlap": self.chunk_overlap}

    def save_pretrained(self, path: str | Path) -> None:
        """Write the directory described in the module docstring; LoRA adapters are merged first (in place)."""
        path = Path(path)
        self.merge_lora()
        self.vlm.save_pretrained(path / "vlm")
        self.llm.save_pretrained(path / "llm")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()},
                  str(path / PROJECTION_FILE))
        self._write_manifest(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig | None = None) -> "MateEmbedder":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise FileNotFoundError(f"{path} has no {MANIFEST}: not a saved MATE embedder (MateEmbedder."
                                    "save_pretrained writes one); to start from checkpoints, set model.mate.vlm and "
                                    "model.mate.llm")
        m = json.loads((path / MANIFEST).read_text())
        vlm = DualEncoder.from_pretrained(path / "vlm")
        projection = Projection(m["in_dim"], m["out_dim"], m["projection"], m["hidden"])
        projection.load_state_dict(load_file(str(path / PROJECTION_FILE)))
        return cls(vlm, TextTower(path / "llm"), projection, m["chunk_overlap"])
