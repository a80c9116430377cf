"""The generative reranker (UniME-V2): a multimodal LLM answering the judge's Yes/No question for a pair, or "(k)" for
a list (`maple.models.reranker` has the interface)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from maple.judge.prompt import answer_token_ids, apply_chat, judge_prompt
from maple.models.checkpoint import save_hf_parts
from maple.models.config import RerankerConfig
from maple.models.mllm import (
    IMAGE_PAD,
    PROMPT_WORDS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    MLLMEmbedder,
    pool_hidden_states,
)
from maple.models.reranker import Item, Reranker, is_image, list_size, model_config, reranker_manifest
from maple.models.tokenizer import build_word_tokenizer, vocabulary

# The list prompt (our wording; UniME-V2 trains a "(k)" answer over a list). Its instruction, the query and the
# numbered candidates come first; the answer "(" is primed so the next token is the slot's digit.
LIST_PROMPT = ("I will provide you with a query and {n} candidates. Please select the candidate that best meets the "
               "requirements of the query, and respond with its number in parentheses, such as (1). Query: {query}, "
               "Candidates: {candidates}.")
LIST_ANSWER_PREFIX = "("
MAX_LIST_SIZE = 9  # slots are single digits "1".."9": one token each in Qwen2's tokenizer (it splits numbers)
# Words of the prompts above and of the judge's prompt that the tiny twin's word tokenizer must know.
GENERATIVE_WORDS = ["select", "best", "number", "parentheses", "such", "as", "respond", "its", "candidates",
                    *[str(k) for k in range(1, MAX_LIST_SIZE + 1)]]


class GenerativeReranker(Reranker):
    """A multimodal LLM with an LM head (`Qwen2VLForConditionalGeneration`) answering Yes/No or "(k)".

    Only the answer position's logits of the few answer tokens are computed (the final hidden state times those rows
    of the LM head), not the whole vocabulary. Prompts are right-padded; the answer position is the last real token.
    """

    kind = "generative"

    def __init__(self, model, tokenizer, image_processor, use_chat_template: bool = True):
        super().__init__()
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.use_chat_template = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_token_id != model.config.image_token_id:
            raise ValueError(f"tokenizer maps {IMAGE_PAD} to {self.image_token_id} but the model config's "
                             f"image_token_id is {model.config.image_token_id}; tokenizer and weights do not match")
        self.yes_no_ids = list(answer_token_ids(tokenizer, source="reranker.name_or_path"))
        self.slot_ids = [self._single_token(str(k)) for k in range(1, MAX_LIST_SIZE + 1)]

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"the reranker's tokenizer does not have {word!r} as one known token (got ids {ids}); "
                             f"a generative reranker reads its answer from that token's logit")
        return ids[0]

    # --- prompts ---
    def _render(self, item: Item, images: list[Image.Image]) -> str:
        if is_image(item):
            images.append(item)
            return f"{VISION_START}{IMAGE_PAD}{VISION_END}"
        return item

    def _chat(self, prompt: str) -> str:
        return apply_chat(self.tokenizer, prompt, self.use_chat_template)

    def pair_prompt(self, query: Item, candidate: Item, images: list[Image.Image]) -> str:
        return self._chat(judge_prompt(self._render(query, images), self._render(candidate, images)).text)

    def list_prompt(self, query: Item, candidates: list[Item], images: list[Image.Image]) -> str:
        q = self._render(query, images)
        listed = ", ".join(f"({k + 1}) {self._render(c, images)}" for k, c in enumerate(candidates))
        text = self._chat(LIST_PROMPT.format(n=len(candidates), query=q, candidates=listed))
        # The answer "(" is primed so that the next token is the slot's digit; after a space where there is no chat
        # template, so that the plain prompt's final "." and the "(" stay two tokens.
        return text + ("" if self.use_chat_template else " ") + LIST_ANSWER_PREFIX

    def _encode(self, prompts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {}
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            counts = iter((vision["image_grid_thw"].prod(-1) // self.image_processor.merge_size ** 2).tolist())
            # Each <|image_pad|> becomes one token per merged patch group, images in order of appearance.
            expanded = []
            for p in prompts:
                pieces = p.split(IMAGE_PAD)
                expanded.append(pieces[0] + "".join(IMAGE_PAD * next(counts) + rest for rest in pieces[1:]))
            prompts = expanded
            inputs = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        enc = self.tokenizer(prompts, padding=True, padding_side="right", add_special_tokens=False,
                             return_tensors="pt")
        inputs.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        inputs["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).int()
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _answer_logits(self, inputs: dict[str, torch.Tensor], token_ids: list[int]) -> torch.Tensor:
        hidden = self.model.model(use_cache=False, **inputs).last_hidden_state
        last = pool_hidden_states(hidden, inputs["attention_mask"], "last")  # (N, D): the answer position
        head = self.model.get_output_embeddings()
        return F.linear(last, head.weight[token_ids], None if head.bias is None else head.bias[token_ids])

    def pair_logits(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        if len(queries) != len(candidates):
            raise ValueError(f"pair_logits: {len(queries)} queries but {len(candidates)} candidates")
        images: list[Image.Image] = []
        prompts = [self.pair_prompt(q, c, images) for q, c in zip(queries, candidates)]
        return self._answer_logits(self._encode(prompts, images), self.yes_no_ids)

    def list_logits(self, queries: list[Item], candidate_lists: list[list[Item]]) -> torch.Tensor:
        size = list_size(candidate_lists)
        if size > MAX_LIST_SIZE:
            raise ValueError(f"a generative list holds at most {MAX_LIST_SIZE} candidates (single-digit slots); got "
                             f"{size}: lower reranker.listwise_size")
        images: list[Image.Image] = []
        prompts = [self.list_prompt(q, cands, images) for q, cands in zip(queries, candidate_lists)]
        return self._answer_logits(self._encode(prompts, images), self.slot_ids[:size])

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: RerankerConfig) -> "GenerativeReranker":
        """A randomly initialised Qwen2-VL twin with an LM head: the embedder twin's architecture
        (`MLLMEmbedder.tiny`) over a word vocabulary that also holds the prompts' words and the answer tokens."""
        from transformers import Qwen2VLForConditionalGeneration

        base = MLLMEmbedder.tiny(model_config(cfg, "qwen2vl"))
        specials = [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
        tokenizer = build_word_tokenizer([*vocabulary(), *PROMPT_WORDS, *GENERATIVE_WORDS],
                                         max_length=base.tokenizer.model_max_length, special_tokens=specials)
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in specials}
        config = copy.deepcopy(base.model.config)
        config.text_config.vocab_size = len(tokenizer)
        config.image_token_id, config.video_token_id = ids[IMAGE_PAD], ids[VIDEO_PAD]
        config.vision_start_token_id, config.vision_end_token_id = ids[VISION_START], ids[VISION_END]
        config.tie_word_embeddings = False
        return cls(Qwen2VLForConditionalGeneration(config), tokenizer, base.image_processor)

    def save_pretrained(self, path: str | Path) -> None:
        save_hf_parts(path, self.model, self.tokenizer, self.image_processor)
        self._write_manifest(Path(path), {"use_chat_template": self.use_chat_template})

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: RerankerConfig | None = None) -> "GenerativeReranker":
        """A maple directory or an MLLM checkpoint by name or path (e.g. Qwen/Qwen2-VL-2B-Instruct)."""
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        remote = bool(cfg and cfg.trust_remote_code)
        manifest = reranker_manifest(path)
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=remote)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        # The PIL backend: Qwen2-VL's default image processor needs torchvision.
        processor = AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=remote)
        return cls(model, tokenizer, processor, manifest.get("use_chat_template", True))
