from typing import Literal

from maple.section import Section


class TinyConfig(Section):
    """Sizes of the tiny randomly initialised twin built when `name_or_path` is None (tests, CPU demo)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 8
    embed_dim: int = 64


class PalConfig(Section):
    """PAL (maple.models.anchor): K anchors per modality over two frozen token encoders (ARCHITECTURE.md)."""

    num_anchors: int = 512  # K (the paper's value)
    tau_pool: float = 0.03  # τ_p, per-anchor softmax pooling over tokens
    tau: float = 0.07  # τ, the fixed InfoNCE temperature
    image_encoder: str | None = None  # a ViT checkpoint by name or path (facebook/dinov2-large); None: tiny random ViT
    image_prefix_tokens: int = 1  # leading non-patch tokens to drop (CLS; + registers for DINOv2-with-registers)
    text_encoder: str | None = None  # a text encoder by path or cached name; None: the bundled all-MiniLM-L6-v2
    anchor_init: Literal["tokens", "normal"] = "tokens"  # tokens: K random cached token features; normal: N(0, 1)
    feature_cache: str | None = None  # frozen token features (Parquet); None: <run.output_dir>/pal/features


class ModelConfig(Section):
    """Which embedder: a family, and a checkpoint by name or path (None: the family's tiny random twin)."""

    family: Literal["clip", "siglip", "qwen2vl", "pal", "mate"] = "clip"
    name_or_path: str | None = None
    image_size: int = 64
    pooling: Literal["last", "mean"] = "last"  # MLLM embedders
    bidirectional: bool = False  # MLLM embedders: MAPLE's bidirectional attention
    trust_remote_code: bool = False
    max_text_tokens: int = 64
    tiny: TinyConfig = TinyConfig()
    pal: PalConfig = PalConfig()
