"""MLLM embedders (Qwen2-VL family): one multimodal LLM reads images and texts alike; its final hidden state embeds.

An input becomes a prompt that ends in an instruction asking for a one-word summary (E5-V, arXiv 2407.12580;
VLM2Vec, arXiv 2410.05160), so the last position has to gather the whole input:

    image: "<|vision_start|><|image_pad|>×n<|vision_end|>\\nSummarize above image in one word:"
    text:  "<text>\\nSummarize above sentence in one word:"

The embedding is the final layer's state at the last real token (pooling "last") or the mean over real tokens
(pooling "mean"), L2-normalised. MAPLE (arXiv 2506.06970) optionally lets every token attend to every other
(bidirectional attention); see `set_bidirectional`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLModel,
)

from maple.models.checkpoint import save_hf_parts
from maple.models.config import ModelConfig
from maple.models.embedder import MANIFEST, Embedder, normalise
from maple.models.manifest import read_manifest
from maple.models.tokenizer import build_word_tokenizer, vocabulary

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
IMAGE_PROMPT = f"{VISION_START}{IMAGE_PAD}{VISION_END}\nSummarize above image in one word:"
TEXT_PROMPT = "{text}\nSummarize above sentence in one word:"
# Words of the prompts above, added to the tiny twin's word-level vocabulary so the instruction is not [UNK].
PROMPT_WORDS = ["summarize", "above", "image", "sentence", "in", "one", "word", ":"]
# The tiny twin merges 2×2 patches into one LLM token, as Qwen2-VL does.
MERGE_SIZE = 2
# Linear layers of the language model (peft `target_modules`); the vision tower's are named qkv/proj/fc1/fc2.
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def set_bidirectional(model: Qwen2VLModel, bidirectional: bool) -> None:
    """Make the language model's self-attention full (every token sees every real token) or causal again.

    transformers 5's switch for decoder LLMs is the text config's `is_causal`: the text model's forward
    (`merge_with_config_defaults`) hands it to `create_causal_mask`, which then builds a padding-only (bidirectional)
    mask, and to the attention function as its `is_causal` argument, which overrides the attention module's
    hard-coded True where the mask is skipped (no padding). It is saved in config.json with the weights.
    """
    model.config.text_config.is_causal = not bidirectional


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence from the final layer's states, padding ignored (either padding side).

    hidden: (N, L, D); attention_mask: (N, L) 1 for real tokens; pooling "last" (the last real token) or "mean"
    (mean over real tokens). Returns (N, D), not normalised.
    """
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    if pooling == "last":
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; model.pooling must be 'last' or 'mean'")


class MLLMEmbedder(Embedder):
    """A Qwen2-VL model (`Qwen2VLModel`, no LM head) as an image/text embedder.

    `self.model` is the Hugging Face module. LoRA / DoRA through peft wraps its language model's linear layers:
    `target_modules=LORA_TARGET_MODULES` (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj under
    `language_model.layers.*`), e.g. `self.model = peft.get_peft_model(self.model, LoraConfig(r=8,
    target_modules=LORA_TARGET_MODULES))`. The vision tower (`visual`: qkv, proj, fc1, fc2) is left out by those names.
    Merge adapters (`self.model = self.model.merge_and_unload()`) before `save_pretrained`, which saves full weights.

    Inputs: `tokenize` gives input_ids / attention_mask (right-padded: text-only positions are 0..n-1, so padding
    must come last). `preprocess` gives the same plus `mm_token_type_ids` (1 at image tokens), `pixel_values`
    (all images' patches concatenated, (sum of patches, C·T·P·P), not one row per image) and `image_grid_thw` (N, 3),
    which splits them; slice image batches with `image_grid_thw`, not by rows of `pixel_values`.
    """

    family = "qwen2vl"
    lora_targets = LORA_TARGET_MODULES

    def __init__(self, model: Qwen2VLModel, tokenizer, image_processor, pooling: str = "last",
                 bidirectional: bool = False, max_text_tokens: int = 64, image_prompt: str = IMAGE_PROMPT,
                 text_prompt: str = TEXT_PROMPT):
        super().__init__()
        if image_prompt.count(IMAGE_PAD) != 1:
            raise ValueError(f"image_prompt must contain {IMAGE_PAD} exactly once, got {image_prompt!r}")
        if "{text}" not in text_prompt:
            raise ValueError(f"text_prompt must contain '{{text}}', got {text_prompt!r}")
        if pooling not in ("last", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; model.pooling must be 'last' or 'mean'")
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.pooling, self.bidirectional, self.max_text_tokens = pooling, bidirectional, max_text_tokens
        self.image_prompt, self.text_prompt = image_prompt, text_prompt
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_token_id != model.config.image_token_id:
            raise ValueError(f"tokenizer maps {IMAGE_PAD} to {self.image_token_id} but the model config's "
                             f"image_token_id is {model.config.image_token_id}; tokenizer and weights do not match")
        set_bidirectional(model, bidirectional)

    @property
    def embedding_dim(self) -> int:
        return self.model.config.text_config.hidden_size

    # --- inputs ---
    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # Truncate the text itself to max_text_tokens (cut at the last kept token's character offset), never the
        # instruction after it: the last token must stay the instruction's.
        cut = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=self.max_text_tokens, return_offsets_mapping=True)["offset_mapping"]
        texts = [t[:offsets[-1][1]] if offsets else "" for t, offsets in zip(texts, cut)]
        return self._encode([self.text_prompt.format(text=t) for t in texts])

    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        vision = self.image_processor(images=list(images), return_tensors="pt")
        grid = vision["image_grid_thw"]
        # One <|image_pad|> per merged patch group: what the model's placeholder check counts.
        counts = (grid.prod(-1) // self.image_processor.merge_size ** 2).tolist()
        batch = self._encode([self.image_prompt.replace(IMAGE_PAD, IMAGE_PAD * n) for n in counts])
        # M-RoPE needs to know which positions are image tokens (1) and which text (0).
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).int()
        return {**batch, "pixel_values": vision["pixel_values"], "image_grid_thw": grid}

    # --- embeddings ---
    def _embed(self, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.model(attention_mask=attention_mask, use_cache=False, **inputs).last_hidden_state
        return normalise(pool_hidden_states(hidden, attention_mask, self.pooling))

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._embed(attention_mask, input_ids=input_ids)

    def embed_images(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mm_token_type_ids: torch.Tensor,
                     pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        return self._embed(attention_mask, input_ids=input_ids, mm_token_type_ids=mm_token_type_ids,
                           pixel_values=pixel_values, image_grid_thw=image_grid_thw)

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: ModelConfig) -> "MLLMEmbedder":
        """A random Qwen2-VL twin: cfg.tiny sizes, images of at most cfg.image_size² pixels, word-level tokenizer."""
        t = cfg.tiny
        max_image_tokens = (cfg.image_size // (t.patch_size * MERGE_SIZE)) ** 2
        max_positions = cfg.max_text_tokens + max_image_tokens + 32  # + the prompt's own tokens
        tokenizer = build_word_tokenizer([*vocabulary(), *PROMPT_WORDS], max_length=max_positions,
                                         special_tokens=[VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD])
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
        # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections, 1 : 1.5 : 1.5 as Qwen2-VL's
        # [16, 24, 24] for head_dim 128.
        half = t.hidden_size // t.num_heads // 2
        section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
        text = dict(vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                    num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                    num_key_value_heads=max(1, t.num_heads // 2),
                    max_position_embeddings=max_positions,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
        vision = dict(depth=t.num_layers, embed_dim=t.hidden_size, hidden_size=t.hidden_size, num_heads=t.num_heads,
                      mlp_ratio=2, patch_size=t.patch_size, spatial_merge_size=MERGE_SIZE, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD],
                               video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
                               vision_end_token_id=ids[VISION_END])
        factor = t.patch_size * MERGE_SIZE
        # Images are resized (aspect kept) to at most cfg.image_size² pixels and at least 2×2 LLM tokens.
        processor = Qwen2VLImageProcessorPil(patch_size=t.patch_size, merge_size=MERGE_SIZE, temporal_patch_size=2,
                                             min_pixels=(2 * factor) ** 2, max_pixels=cfg.image_size ** 2)
        return cls(Qwen2VLModel(config), tokenizer, processor, cfg.pooling, cfg.bidirectional, cfg.max_text_tokens)

    def manifest(self) -> dict:
        return {"family": self.family, "pooling": self.pooling, "bidirectional": self.bidirectional,
                "max_text_tokens": self.max_text_tokens, "image_prompt": self.image_prompt,
                "text_prompt": self.text_prompt}

    def save_pretrained(self, path: str | Path) -> None:
        save_hf_parts(path, self.model, self.tokenizer, self.image_processor)
        self._write_manifest(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig | None = None) -> "MLLMEmbedder":
        """A maple directory (settings from its manifest) or a Qwen2-VL checkpoint by name or path (settings from cfg).

        A `Qwen2VLForConditionalGeneration` checkpoint (e.g. Qwen/Qwen2-VL-2B-Instruct) loads into the base model;
        its LM head is not needed for embeddings and is dropped.
        """
        manifest = read_manifest(path, MANIFEST)
        cfg = cfg or ModelConfig(family="qwen2vl")
        settings = {"pooling": cfg.pooling, "bidirectional": cfg.bidirectional, "max_text_tokens": cfg.max_text_tokens,
                    "image_prompt": IMAGE_PROMPT, "text_prompt": TEXT_PROMPT}
        settings.update({k: v for k, v in manifest.items() if k in settings})
        remote = cfg.trust_remote_code
        model = AutoModel.from_pretrained(path, trust_remote_code=remote)
        if not hasattr(model, "language_model") or not hasattr(model, "visual"):
            raise ValueError(f"{path}: {type(model).__name__} is not a Qwen2-VL-style model (needs .language_model "
                             f"and .visual); model.family 'qwen2vl' expects a Qwen2-VL checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        # The PIL backend: Qwen2-VL's default image processor needs torchvision.
        processor = AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=remote)
        return cls(model, tokenizer, processor, **settings)
