"""The LLM rewriter: the parser on well-formed, malformed and empty answers, and the wiring of both engines (hf,
vLLM's CPU build) on the tiny random Llama. A random model writes nonsense: these tests check that every line of its
answer is parsed or rejected with a reason and nothing raises, not the quality of rewrites."""

import json

import pytest

from maple.rewrite.config import KINDS, RewriteConfig
from maple.rewrite.llm import parse_rewrites, rewrite_prompt

CAPTION = "a small red circle left of a large blue square"
REASONS = {"not_json", "not_an_object", "unknown_kind", "empty_rewrite", "same_as_caption", "duplicate_rewrite",
           "empty_answer"}


def test_the_prompt_names_every_kind_the_format_and_the_caption():
    prompt = rewrite_prompt(CAPTION, 5)
    assert "5 different ways" in prompt and prompt.endswith(f"Caption: {CAPTION}")
    assert all(f"- {kind}:" in prompt for kind in KINDS)
    assert '{"kind": "replace_attribute", "caption": "a small green square"}' in prompt


def test_a_well_formed_answer_gives_one_rewrite_per_line():
    answer = "\n".join(json.dumps({"kind": k, "caption": c}) for k, c in [
        ("swap_relation", "a large blue square left of a small red circle"),
        ("reword", "a large blue square right of a small red circle"),
        ("replace_attribute", "a small green circle left of a large blue square")])
    out = parse_rewrites(f"```json\n{answer}\n```", CAPTION)
    assert [(r.kind, r.text) for r in out.rewrites] == [
        ("swap_relation", "a large blue square left of a small red circle"),
        ("reword", "a large blue square right of a small red circle"),
        ("replace_attribute", "a small green circle left of a large blue square")]
    assert out.rejects == []


def test_a_malformed_answer_keeps_what_parses_and_rejects_the_rest_with_reasons():
    answer = "\n".join([
        'Sure! Here are some rewrites:',
        '{"kind": "replace_object", "caption": "a small red triangle left of a large blue square"}',
        '{"kind": "make_it_funny", "caption": "a clown"}',
        '["not", "an", "object"]',
        '{"kind": "reword", "caption": "a small red circle left of a large blue square"}',
        '{"kind": "drop_clause", "caption": "   "}',
        '{"kind": "replace_object", "caption": "a small red triangle left of a large blue square"},',
        '{"kind": "add_clause", "caption": "a small red circle left of a large blue square and a white diamond"',
    ])
    out = parse_rewrites(answer, CAPTION)
    assert [r.kind for r in out.rewrites] == ["replace_object"]
    assert [reason for reason, _ in out.rejects] == ["not_json", "unknown_kind", "not_an_object", "same_as_caption",
                                                     "empty_rewrite", "duplicate_rewrite", "not_json"]


@pytest.mark.parametrize("answer", ["", "   \n\n", None])
def test_an_empty_answer_is_one_reject(answer):
    out = parse_rewrites(answer, CAPTION)
    assert out.rewrites == [] and [reason for reason, _ in out.rejects] == ["empty_answer"]


def _check_wiring(proposals, n):
    assert len(proposals) == n
    for found in proposals:
        assert len(found.rewrites) + len(found.rejects) >= 1  # every answer is accounted for
        assert {reason for reason, _ in found.rejects} <= REASONS
        assert all(r.kind in KINDS and r.text for r in found.rewrites)


def test_the_hf_engine_answers_every_caption_and_parses_without_raising(tiny_llama):
    from maple.rewrite.llm import HFRewriter

    rewriter = HFRewriter(RewriteConfig(backend="hf", model=tiny_llama, per_query=3, max_new_tokens=24, batch_size=2))
    items = [("q1", CAPTION), ("q2", "a large white diamond"), ("q3", "a small green triangle above a red square")]
    first = rewriter.rewrite(items)
    _check_wiring(first, 3)
    assert [f.rejects for f in rewriter.rewrite(items)] == [f.rejects for f in first]  # seeded by (seed, id)


def test_the_vllm_engine_answers_every_caption_and_parses_without_raising(tiny_llama):
    from maple.rewrite.llm import VLLMRewriter

    rewriter = VLLMRewriter(RewriteConfig(backend="vllm", model=tiny_llama, per_query=3, max_new_tokens=24,
                                          max_model_len=1024, enforce_eager=True), dtype="float32")
    try:
        _check_wiring(rewriter.rewrite([("q1", CAPTION), ("q2", "a large white diamond")]), 2)
    finally:
        del rewriter.llm
