"""Judge pairs and their reference scores (the tiny judge checkpoints are in tests/fixtures/judge.py)."""

import pytest


@pytest.fixture(scope="session")
def text_pairs():
    """Text-to-text pairs: three queries with four candidates each, a query's rows together."""
    from maple.judge.base import make_pairs

    queries = ["a small red circle left of a large blue square", "a large green triangle", "a small white diamond"]
    candidates = ["a small red circle", "a large blue square above a small green triangle", "a large white diamond",
                  "a small red circle and a large blue square below a small yellow circle"]
    return make_pairs([{"query_id": f"q{i}", "query_text": q, "candidate_id": f"c{j}", "candidate_text": c}
                       for i, q in enumerate(queries) for j, c in enumerate(candidates)])


def _direct_scores(model_path: str, pairs) -> list[float]:
    """The reference: each pair alone, unpadded, through the plain transformers model; the two logits at the last
    position read by hand and softmaxed in float64 by the explicit formula."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maple.judge.prompt import judge_prompt

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out = []
    for q, c in zip(pairs["query_text"], pairs["candidate_text"]):
        ids = tok(judge_prompt(q, c).text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].double()
        ly, ln = float(logits[yes]), float(logits[no])
        out.append(math.exp(ly) / (math.exp(ly) + math.exp(ln)))
    return out


@pytest.fixture(scope="session")
def direct_scores(tiny_llama, text_pairs) -> list[float]:
    return _direct_scores(tiny_llama, text_pairs)
