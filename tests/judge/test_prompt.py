import math

import numpy as np
import pytest

from maple.judge.prompt import (
    JudgeSetupError,
    answer_token_ids,
    judge_prompt,
    side_text,
    yes_probability,
)
from maple.models.tokenizer import build_word_tokenizer


def test_prompt_is_the_unime_v2_wording_with_the_candidate_last():
    prompt = judge_prompt("a red circle", "<image>")
    assert prompt.text == (
        "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the requirements "
        "of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'. "
        "Query:a red circle, Candidates:<image>.")
    assert prompt.text.startswith(prompt.prefix) and prompt.text[len(prompt.prefix):] == "<image>."


def test_candidates_of_one_query_share_the_whole_prefix():
    a, b = judge_prompt("a red circle", "first candidate"), judge_prompt("a red circle", "second")
    assert a.prefix == b.prefix and a.text != b.text


def test_side_text_puts_the_image_placeholder_before_the_text():
    assert side_text("a caption", True, "<image>") == "<image> a caption"
    assert side_text(None, True, "<image>") == "<image>"
    assert side_text("a caption", False, "<image>") == "a caption"
    with pytest.raises(ValueError):
        side_text(None, False, "<image>")


def test_yes_probability_matches_an_explicit_two_way_softmax():
    rng = np.random.default_rng(0)
    yes, no = rng.normal(size=7) * 5, rng.normal(size=7) * 5
    got = yes_probability(yes, no)
    for i in range(7):
        expected = math.exp(yes[i]) / (math.exp(yes[i]) + math.exp(no[i]))
        assert got[i] == pytest.approx(expected, abs=1e-6)
    assert got.dtype == np.float32


def test_yes_probability_keeps_nan_and_survives_extreme_logits():
    got = yes_probability([np.nan, 1000.0, -1000.0], [0.0, -1000.0, 1000.0])
    assert np.isnan(got[0]) and got[1] == 1.0 and got[2] == 0.0


def test_answer_tokens_are_single_distinct_ids():
    tok = build_word_tokenizer(["yes", "no", "query"])
    yes, no = answer_token_ids(tok)
    assert tok.convert_ids_to_tokens([yes, no]) == ["yes", "no"]


def test_a_tokenizer_without_the_answer_words_is_refused_naming_the_word():
    tok = build_word_tokenizer(["query", "candidate"])  # "Yes" maps to [UNK]
    with pytest.raises(JudgeSetupError, match="'Yes'"):
        answer_token_ids(tok)
