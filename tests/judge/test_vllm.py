"""The vLLM judge (CPU build on this machine) on a tiny random Llama: one engine for the module (start-up is slow)."""

import numpy as np
import pytest

from maple.judge.config import JudgeConfig

pytestmark = pytest.mark.e2e  # a vLLM engine, in a process of its own


@pytest.fixture(scope="module")
def vllm_judge(tiny_llama):
    from maple.judge.vllm import VLLMJudge

    judge = VLLMJudge(JudgeConfig(backend="vllm", model=tiny_llama, dtype="float32", max_model_len=256,
                                  batch_size=8, enforce_eager=True))
    yield judge
    del judge.llm


def test_vllm_scores_agree_with_a_direct_transformers_computation(vllm_judge, text_pairs, direct_scores):
    got = vllm_judge.score(text_pairs)
    np.testing.assert_allclose(got, direct_scores, atol=1e-3)


def test_vllm_and_hf_read_identical_prompts_and_agree(vllm_judge, tiny_llama, text_pairs):
    from maple.judge.hf import HFJudge

    hf = HFJudge(JudgeConfig(backend="hf", model=tiny_llama, max_model_len=256))
    np.testing.assert_allclose(vllm_judge.score(text_pairs), hf.score(text_pairs), atol=1e-3)


def test_vllm_gives_nan_not_a_score_to_a_prompt_longer_than_max_model_len(vllm_judge, text_pairs):
    pairs = {k: list(v[:2]) for k, v in text_pairs.items()}
    pairs["candidate_text"][1] = " and ".join(["a small red circle"] * 60)
    got = vllm_judge.score(pairs)
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_vllm_output_without_the_answer_logprobs_is_flagged_nan(vllm_judge, text_pairs):
    from vllm import SamplingParams

    # An engine asked for other tokens' logprobs returns no Yes/No entries: the judge must not invent a score.
    saved = vllm_judge.params
    vllm_judge.params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[0, 1])
    try:
        got = vllm_judge.score({k: list(v[:2]) for k, v in text_pairs.items()})
    finally:
        vllm_judge.params = saved
    assert np.isnan(got).all()
