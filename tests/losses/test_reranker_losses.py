"""UniME-V2's reranker losses against explicit-loop float64 references; the listwise slot distribution."""

import math

import pytest
import torch
from scipy.stats import chisquare

from maple.losses.reranker import listwise_slots, reranker_listwise_loss, reranker_pairwise_loss


def _neg_log_softmax_at(logits: list[float], index: int) -> float:
    top = max(logits)
    return -(logits[index] - top - math.log(sum(math.exp(x - top) for x in logits)))


def reference_pairwise(logits_pos, logits_neg) -> float:
    """mean_i −log P(Yes | q_i, c+) + mean_i −log P(No | q_i, hardest negative); column 0 = Yes, 1 = No."""
    yes_for_positive = [_neg_log_softmax_at(row, 0) for row in logits_pos.tolist()]
    no_for_negative = [_neg_log_softmax_at(row, 1) for row in logits_neg.tolist()]
    return sum(yes_for_positive) / len(yes_for_positive) + sum(no_for_negative) / len(no_for_negative)


def reference_listwise(list_logits, target) -> float:
    rows = list_logits.tolist()
    return sum(_neg_log_softmax_at(row, t) for row, t in zip(rows, target.tolist())) / len(rows)


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def test_reranker_pairwise_matches_explicit_loop_reference():
    pos, neg = _logits(5, 2, seed=0), _logits(5, 2, seed=1)
    assert reranker_pairwise_loss(pos, neg).item() == pytest.approx(reference_pairwise(pos, neg), abs=1e-6)


def test_reranker_listwise_matches_explicit_loop_reference():
    logits = _logits(6, 9, seed=2)
    target = listwise_slots(8, torch.Generator().manual_seed(0), num_queries=6)
    assert reranker_listwise_loss(logits, target).item() == pytest.approx(reference_listwise(logits, target), abs=1e-6)


def test_reranker_pairwise_gradcheck():
    pos, neg = _logits(3, 2, seed=3).requires_grad_(), _logits(3, 2, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(reranker_pairwise_loss, (pos, neg))


def test_reranker_listwise_gradcheck():
    logits = _logits(3, 5, seed=5).requires_grad_()
    target = torch.tensor([0, 4, 2])
    assert torch.autograd.gradcheck(lambda x: reranker_listwise_loss(x, target), (logits,))


def test_listwise_slots_are_uniform_over_all_slots_including_the_last():
    num_negatives, draws = 4, 20_000
    slots = listwise_slots(num_negatives, torch.Generator().manual_seed(123), num_queries=draws)
    counts = torch.bincount(slots, minlength=num_negatives + 1)
    assert len(counts) == num_negatives + 1  # nothing outside [0, x]
    assert counts[-1] > 0.8 * draws / (num_negatives + 1)  # the last slot is drawn as often as any other
    assert chisquare(counts.tolist()).pvalue > 1e-3


def test_listwise_slots_are_reproducible_from_the_generator_seed():
    a = listwise_slots(7, torch.Generator().manual_seed(9), num_queries=50)
    b = listwise_slots(7, torch.Generator().manual_seed(9), num_queries=50)
    assert torch.equal(a, b)
