"""The judge prompt of UniME-V2 (arXiv 2510.13515) and the Yes/No answer tokens. Pure: strings and token ids only.

The instruction, the query and a query image come first and the candidate last, so every pair of one query shares a
prompt prefix that an engine's prefix cache computes once (ARCHITECTURE.md "The judge"). The score is
    s = softmax([logit_Yes, logit_No])[0]
at the first answer position (MAPLE's yes/no alignment score α). The reranker builds its Yes/No prompts here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maple.section import SetupError

INSTRUCTION = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the requirements "
    "of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'."
)
DEFAULT_IMAGE_PLACEHOLDER = "<image>"
# The text an image stands for in a prompt, by the model's config `model_type` (vLLM and the HF processors expand
# it into the image's patch tokens).
IMAGE_PLACEHOLDERS = {
    "llava": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}


class JudgeSetupError(SetupError):
    """A judge that cannot run as configured; raised at start, before any data is read."""


@dataclass(frozen=True)
class JudgePrompt:
    """`prefix` is shared by every candidate of one query; `text` = prefix + the candidate's part."""

    prefix: str
    text: str


def side_text(text: str | None, has_image: bool, image_placeholder: str) -> str:
    """One side of a pair as prompt text: the image placeholder, then the text (either may be absent)."""
    parts = ([image_placeholder] if has_image else []) + ([text] if text else [])
    if not parts:
        raise ValueError("a judge pair side has neither text nor image")
    return " ".join(parts)


def judge_prompt(query: str, candidate: str, instruction: str = INSTRUCTION) -> JudgePrompt:
    """UniME-V2's judge prompt: "<instruction> Query:<query>, Candidates:<candidate>." (the paper's wording).

    query, candidate: each side already as text (`side_text` puts an image placeholder where a side is an image).
    """
    prefix = f"{instruction} Query:{query}, Candidates:"
    return JudgePrompt(prefix=prefix, text=f"{prefix}{candidate}.")


def apply_chat(tokenizer: Any, text: str, use_template: bool = True) -> str:
    """The prompt as the model reads it: wrapped as one user turn plus the assistant's answer header when the
    tokenizer has a chat template (the candidate stays last inside the user turn, so prefixes still match);
    the plain text otherwise (tiny test models, base LMs)."""
    if use_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def answer_token_ids(tokenizer: Any, yes: str = "Yes", no: str = "No", source: str = "judge.model") -> tuple[int, int]:
    """The ids of the answer words; each must be one token of the judge's vocabulary, and they must differ.

    Raises JudgeSetupError naming the model and the word otherwise: a judge that splits "Yes" into pieces or maps it
    to the unknown token cannot give the two logits the score needs.
    """
    ids = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for word in (yes, no):
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1 or (unk is not None and tokens[0] == unk):
            raise JudgeSetupError(
                f"{source}: the answer word {word!r} is not a single token of the judge's tokenizer "
                f"(got ids {tokens}); "
                "use a judge whose vocabulary has it, or set judge.yes_token / judge.no_token to words it has")
        ids.append(int(tokens[0]))
    if ids[0] == ids[1]:
        raise JudgeSetupError(f"{source}: {yes!r} and {no!r} map to the same token id {ids[0]}")
    return ids[0], ids[1]


def yes_probability(logit_yes, logit_no) -> np.ndarray:
    """s = softmax([logit_Yes, logit_No])[0] = sigmoid(logit_Yes − logit_No), elementwise, float32; NaN stays NaN.

    Log-probabilities work as well as logits: the softmax normaliser cancels in the difference.
    """
    diff = np.asarray(logit_yes, dtype=np.float64) - np.asarray(logit_no, dtype=np.float64)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-diff))).astype(np.float32)

