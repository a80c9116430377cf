"""The `hf` judge: transformers, one forward pass per batch of pairs, no generate loop.

Prompts are left-padded so that every row's last position is its first answer position; the logits of "Yes" and
"No" there give s = softmax([logit_Yes, logit_No])[0]. Position ids are counted over the real tokens only, so a
padded row computes exactly what it would alone. A text-only causal LM judges text pairs; an image side needs a
multimodal checkpoint loadable by `AutoModelForImageTextToText` + `AutoProcessor` (LLaVA-style; docs/judge.md).
"""

from __future__ import annotations

import numpy as np
import torch

from maple.judge.base import JudgeBackend, Pairs, num_pairs
from maple.judge.config import JudgeConfig
from maple.judge.hf_model import PromptBuilder, is_multimodal, load_config_and_tokenizer
from maple.judge.prompt import answer_token_ids, yes_probability


def _dtype(name: str, device: torch.device) -> torch.dtype | str:
    """`auto`: bf16 on a CUDA card that has it (the judge's forward is the mining job's cost), else the checkpoint's
    own dtype."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else "auto"
    return getattr(torch, name)


class HFJudge(JudgeBackend):
    name = "hf"

    def __init__(self, cfg: JudgeConfig, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        path, config, tokenizer = load_config_and_tokenizer(cfg)
        self.sees_images = is_multimodal(config)
        use_gpu = cfg.gpus_per_actor > 0 and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if use_gpu else "cpu"))
        if self.sees_images:
            self.processor = AutoProcessor.from_pretrained(path)
            self.processor.tokenizer.padding_side = "left"
            tokenizer = self.processor.tokenizer
            model_cls = AutoModelForImageTextToText
        else:
            self.processor = None
            model_cls = AutoModelForCausalLM
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.model = model_cls.from_pretrained(path, dtype=_dtype(cfg.dtype, self.device)).to(self.device).eval()
        self.prompts = PromptBuilder(cfg, config, tokenizer)
        self.yes_id, self.no_id = answer_token_ids(tokenizer, cfg.yes_token, cfg.no_token, f"judge.model={cfg.model}")

    def score(self, pairs: Pairs) -> np.ndarray:
        n = num_pairs(pairs)
        texts = self.prompts.texts(pairs)
        out = np.full(n, np.nan, dtype=np.float32)
        if self.processor is None:
            ids = self.prompts.token_ids(texts)
            fits = [i for i in range(n) if len(ids[i]) <= self.cfg.max_model_len]  # the rest stays NaN
            for start in range(0, len(fits), self.cfg.batch_size):
                rows = fits[start:start + self.cfg.batch_size]
                out[rows] = self._score_ids([ids[i] for i in rows])
        else:
            for start in range(0, n, self.cfg.batch_size):
                rows = list(range(start, min(n, start + self.cfg.batch_size)))
                out[rows] = self._score_multimodal(pairs, texts, rows)
        return out

    @torch.no_grad()
    def _score_ids(self, ids: list[list[int]]) -> np.ndarray:
        """ids: B token-id lists -> (B,) P(Yes), one forward pass over the left-padded batch."""
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        return self._forward(input_ids=input_ids, attention_mask=mask)

    @torch.no_grad()
    def _score_multimodal(self, pairs: Pairs, texts: list[str], rows: list[int]) -> np.ndarray:
        images = [img for i in rows for img in self.prompts.images(pairs, i)]
        inputs = self.processor(text=[texts[i] for i in rows], images=images or None, padding=True,
                                return_tensors="pt")
        lengths = inputs["attention_mask"].sum(dim=1)
        scores = self._forward(**{k: v.to(self.device) for k, v in inputs.items()})
        scores[(lengths > self.cfg.max_model_len).cpu().numpy()] = np.nan
        return scores

    def _forward(self, **inputs: torch.Tensor) -> np.ndarray:
        mask = inputs["attention_mask"]
        position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # count real tokens only (left padding)
        logits = self.model(**inputs, position_ids=position_ids, logits_to_keep=1).logits[:, -1, :]
        pair = logits[:, [self.yes_id, self.no_id]].float().cpu().numpy()
        return yes_probability(pair[:, 0], pair[:, 1])
