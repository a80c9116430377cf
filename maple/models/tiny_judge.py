"""Tiny randomly initialised judge checkpoints, built offline from configs, for tests, benchmarks and the CPU demo.

- `llama`: a Llama-style causal LM (text pairs). Head dim 64: the CPU build of vLLM refuses smaller heads.
- `llava`: LLaVA (CLIP vision tower + projector + the same Llama) with its processor (image-text pairs).
The tokenizer is maple's word-level one over the synthetic world's vocabulary and the judge prompt's words, so
"Yes" and "No" are single tokens; like Llama's it prepends a BOS token. Random weights: the scores mean nothing,
but every engine must compute the same ones from them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import processors

from maple.models.tokenizer import build_word_tokenizer, vocabulary

IMAGE_TOKEN = "<image>"
PROMPT_WORDS = ["candidates", "doesn", "t", "i", "will", "provide"]  # the judge prompt's words missing elsewhere


def tiny_judge_tokenizer(max_length: int = 1024, image_token: bool = False):
    tok = build_word_tokenizer(vocabulary() + PROMPT_WORDS, max_length=max_length,
                               special_tokens=[IMAGE_TOKEN] if image_token else None)
    bos = tok.convert_tokens_to_ids("[BOS]")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A $B", special_tokens=[("[BOS]", bos)])
    return tok


def _llama_config(vocab_size: int, tok, hidden: int, layers: int, max_len: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                       head_dim=64, max_position_embeddings=max_len, pad_token_id=tok.pad_token_id,
                       initializer_range=0.2,  # wider than the default, so random judges tell pairs apart
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)


def build_tiny_judge(path: str | Path, kind: str = "llama", *, hidden: int = 128, layers: int = 2,
                     max_len: int = 1024, seed: int = 0) -> Path:
    """Save a tiny random judge (weights as safetensors, tokenizer, processor for llava) to `path`; return it."""
    from transformers import LlamaForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    if kind == "llama":
        tok = tiny_judge_tokenizer(max_len)
        model = LlamaForCausalLM(_llama_config(len(tok), tok, hidden, layers, max_len))
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path
    if kind == "llava":
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        tok = tiny_judge_tokenizer(max_len, image_token=True)
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=64)
        config = LlavaConfig(vision_config=vision, text_config=_llama_config(len(tok), tok, hidden, layers, max_len),
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)
        model = LlavaForConditionalGeneration(config)
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token=IMAGE_TOKEN)
        model.save_pretrained(path)
        processor.save_pretrained(path)
        return path
    raise ValueError(f"build_tiny_judge: kind must be 'llama' or 'llava', got {kind!r}")
