"""The rewriter backends by name."""

from __future__ import annotations

from maple.data.config import WorldConfig
from maple.rewrite.base import Rewriter
from maple.rewrite.config import RewriteConfig
from maple.rewrite.grammar import GrammarRewriter
from maple.rewrite.llm import HFRewriter, VLLMRewriter


def build_rewriter(cfg: RewriteConfig, world: WorldConfig | None = None) -> Rewriter | None:
    """The configured rewriter (model loaded), or None for rewrite.backend=none."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "grammar":
        return GrammarRewriter(cfg, world)
    if cfg.backend == "hf":
        return HFRewriter(cfg)
    if cfg.backend == "vllm":
        return VLLMRewriter(cfg)
    raise ValueError(f"rewrite.backend={cfg.backend!r} is not one of none, grammar, hf, vllm")
