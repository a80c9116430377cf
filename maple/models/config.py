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
