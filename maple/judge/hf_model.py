"""What the `hf` and `vllm` judges share: finding the checkpoint, its tokenizer or processor, the Yes/No token ids,
and turning pairs into the exact prompts (and token ids) both engines read, so the two agree by construction."""

from __future__ import annotations

from typing import Any

from maple.data.files import checkpoint_location
from maple.data.images import decode_image
from maple.judge.base import Pairs, num_pairs
from maple.judge.config import JudgeConfig
from maple.judge.prompt import (
    DEFAULT_IMAGE_PLACEHOLDER,
    IMAGE_PLACEHOLDERS,
    JudgeSetupError,
    answer_token_ids,
    apply_chat,
    judge_prompt,
    side_text,
)


def resolve_model_path(cfg: JudgeConfig) -> str:
    """A local folder as is; a name (`org/model`) through the Hugging Face cache; missing: JudgeSetupError."""
    return checkpoint_location(cfg.model, "judge.model", f"judge.backend={cfg.backend}", JudgeSetupError)


def load_config_and_tokenizer(cfg: JudgeConfig) -> tuple[str, Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_model_path(cfg)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise JudgeSetupError(f"judge.model={cfg.model}: cannot load its config/tokenizer ({exc}); give a local "
                              "folder, or download the model into the Hugging Face cache first") from None
    return path, config, tokenizer


def is_multimodal(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def image_placeholder(cfg: JudgeConfig, config: Any) -> str:
    if cfg.image_placeholder:
        return cfg.image_placeholder
    return IMAGE_PLACEHOLDERS.get(getattr(config, "model_type", ""), DEFAULT_IMAGE_PLACEHOLDER)


def inspect_judge_model(cfg: JudgeConfig) -> dict[str, Any]:
    """The start-up check of an hf/vllm judge: the checkpoint exists and has single "Yes"/"No" tokens."""
    path, config, tokenizer = load_config_and_tokenizer(cfg)
    yes, no = answer_token_ids(tokenizer, cfg.yes_token, cfg.no_token, source=f"judge.model={cfg.model}")
    return {"backend": cfg.backend, "model": path, "model_type": getattr(config, "model_type", "?"),
            "multimodal": is_multimodal(config), "yes_token_id": yes, "no_token_id": no}


class PromptBuilder:
    """Pairs -> the prompt strings (and token ids) a judge model reads; images decoded to PIL in pair order."""

    def __init__(self, cfg: JudgeConfig, config: Any, tokenizer: Any):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.placeholder = image_placeholder(cfg, config)
        self.multimodal = is_multimodal(config)
        self.templated = bool(cfg.chat_template and getattr(tokenizer, "chat_template", None))

    def texts(self, pairs: Pairs) -> list[str]:
        out = []
        for i in range(num_pairs(pairs)):
            q_img, c_img = pairs["query_image"][i] is not None, pairs["candidate_image"][i] is not None
            if (q_img or c_img) and not self.multimodal:
                raise JudgeSetupError(f"judge.model={self.cfg.model} is text-only but pair "
                                      f"({pairs['query_id'][i]!r}, {pairs['candidate_id'][i]!r}) has an image")
            prompt = judge_prompt(side_text(pairs["query_text"][i], q_img, self.placeholder),
                                  side_text(pairs["candidate_text"][i], c_img, self.placeholder))
            out.append(apply_chat(self.tokenizer, prompt.text, self.cfg.chat_template))
        return out

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        # A chat template already holds the special tokens; a plain prompt gets the tokenizer's own (e.g. BOS).
        return [self.tokenizer.encode(t, add_special_tokens=not self.templated) for t in texts]

    @staticmethod
    def images(pairs: Pairs, i: int) -> list:
        """Pair i's images (query first), decoded to RGB PIL images by maple's one image decoder."""
        return [decode_image(bytes(b)) for b in (pairs["query_image"][i], pairs["candidate_image"][i])
                if b is not None]
