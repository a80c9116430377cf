"""The LLM rewriter: a text LLM (transformers or vLLM) asked for rewrites of a caption with one documented prompt, its
answer parsed line by line. The model only proposes; what it writes is labelled by the judge like any candidate.

The prompt (`rewrite_prompt`) names the kinds (`maple.rewrite.config.KINDS`) and asks for one JSON object per line,
`{"kind": "<kind>", "caption": "<text>"}`. `parse_rewrites` keeps every line that is such an object with a known kind
and a new, non-empty caption; every other non-blank line is a reject with its reason (`not_json`, `not_an_object`,
`unknown_kind`, `empty_rewrite`, `same_as_caption`, `duplicate_rewrite`), and an answer with no line at all is one
reject (`empty_answer`). Nothing raises on a bad answer.
"""

from __future__ import annotations

import json
from abc import abstractmethod

from maple.data.files import checkpoint_location
from maple.rewrite.base import Proposals, Rewriter, item_rng
from maple.rewrite.config import KINDS, RewriteConfig

KIND_HELP = {
    "swap_attributes": "exchange an attribute (a colour, a size) between two things",
    "swap_relation": "exchange the two sides of a spatial or action relation",
    "replace_attribute": "replace one attribute by another",
    "replace_object": "replace one object by another",
    "replace_relation": "replace one relation by another",
    "drop_clause": "leave out one part of the caption",
    "add_clause": "add something that is not in the caption",
    "reword": "say exactly the same thing in other words",
}


def rewrite_prompt(caption: str, n: int, kinds: list[str] | tuple[str, ...] = KINDS) -> str:
    lines = [f"Rewrite the image caption below in {n} different ways, to train a model to notice small differences.",
             "Each rewrite is one of these kinds:"]
    lines += [f"- {kind}: {KIND_HELP[kind]}" for kind in kinds]
    lines += ["Answer with one JSON object per line and nothing else, like",
              '{"kind": "replace_attribute", "caption": "a small green square"}',
              f"Caption: {caption}"]
    return "\n".join(lines)


def parse_rewrites(answer: str, caption: str, kinds: list[str] | tuple[str, ...] = KINDS) -> Proposals:
    """An LLM's answer -> the rewrites it holds and a reject per line that is not one (see the module docstring)."""
    out = Proposals()
    lines = [line.strip() for line in (answer or "").splitlines() if line.strip()]
    if not lines:
        out.rejects.append(("empty_answer", answer or ""))
        return out
    for line in lines:
        text = line.strip().rstrip(",")
        if text.startswith("```"):  # a Markdown fence around the objects: not a rewrite, not an error either
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError:
            out.rejects.append(("not_json", line))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("caption"), str):
            out.rejects.append(("not_an_object", line))
            continue
        if item.get("kind") not in kinds:
            out.rejects.append(("unknown_kind", line))
            continue
        out.add(item["caption"], item["kind"], caption)
    return out


class LLMRewriter(Rewriter):
    """The prompt through a chat template where the tokenizer has one; each caption's answer parsed on its own."""

    def __init__(self, cfg: RewriteConfig):
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.path = checkpoint_location(cfg.model, "rewrite.model", f"rewrite.backend={cfg.backend}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)

    def prompts(self, captions: list[str]) -> list[str]:
        texts = [rewrite_prompt(c, self.cfg.per_query, self.cfg.kinds) for c in captions]
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                       add_generation_prompt=True) for t in texts]
        return texts

    def rewrite(self, items: list[tuple[str, str]]) -> list[Proposals]:
        out = []
        for start in range(0, len(items), self.cfg.batch_size):
            chunk = items[start:start + self.cfg.batch_size]
            answers = self.generate([caption for _, caption in chunk], [item_id for item_id, _ in chunk])
            for (_, caption), answer in zip(chunk, answers):
                proposals = parse_rewrites(answer, caption, self.cfg.kinds)
                proposals.rewrites = proposals.rewrites[:self.cfg.per_query]
                out.append(proposals)
        return out

    @abstractmethod
    def generate(self, captions: list[str], ids: list[str]) -> list[str]:
        """The engine's answer to each caption's prompt (sampling seeded by (rewrite.seed, id))."""


class HFRewriter(LLMRewriter):
    """transformers' `generate`, sampling seeded by (rewrite.seed, the first id of the batch)."""

    name = "hf"

    def __init__(self, cfg: RewriteConfig, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__(cfg)
        use_gpu = cfg.gpus_per_actor > 0 and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if use_gpu else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(self.path).to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def generate(self, captions: list[str], ids: list[str]) -> list[str]:
        import torch

        torch.manual_seed(item_rng(self.cfg.seed, ids[0]).randrange(2 ** 31))
        enc = self.tokenizer(self.prompts(captions), return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=self.cfg.temperature > 0,
                                      temperature=self.cfg.temperature or None,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


class VLLMRewriter(LLMRewriter):
    """A vLLM engine; each caption's sampling seeded by (rewrite.seed, its id)."""

    name = "vllm"

    def __init__(self, cfg: RewriteConfig, **engine_kwargs):
        import maple.judge.vllm  # noqa: F401  (its CPU-build defaults: the KV cache a small machine can spare)
        from vllm import LLM

        super().__init__(cfg)
        self.llm = LLM(model=self.path, tokenizer=self.path, max_model_len=cfg.max_model_len,
                       enforce_eager=cfg.enforce_eager, seed=cfg.seed, **engine_kwargs)

    def generate(self, captions: list[str], ids: list[str]) -> list[str]:
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                 seed=item_rng(self.cfg.seed, i).randrange(2 ** 31)) for i in ids]
        results = self.llm.generate(self.prompts(captions), params, use_tqdm=False)
        return [r.outputs[0].text if r.outputs else "" for r in results]
