"""MAPLE's RPA losses against explicit-loop float64 references; masks; gradcheck."""

import math

import pytest
import torch

from maple.losses.rpa import rpa_listwise_loss, rpa_pairwise_loss


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _ranking(scores: list[float], valid: list[bool]) -> list[int]:
    """Valid columns by judge score, best first; ties in column order (Python's sort is stable)."""
    return sorted((j for j in range(len(scores)) if valid[j]), key=lambda j: -scores[j])


def reference_pairwise(sim, judge, beta, mask=None) -> float:
    sim, judge = sim.tolist(), judge.tolist()
    mask = mask.tolist() if mask is not None else [[True] * len(row) for row in sim]
    total = 0.0
    for i in range(len(sim)):
        r = _ranking(judge[i], mask[i])
        for k in range(len(r)):
            for l in range(k + 1, len(r)):
                gap = judge[i][r[k]] - judge[i][r[l]]
                total += gap * _log_sigmoid(beta * sim[i][r[k]] - beta * sim[i][r[l]])
    return -total / len(sim)


def reference_listwise(sim, judge, beta, mask=None) -> float:
    sim, judge = sim.tolist(), judge.tolist()
    mask = mask.tolist() if mask is not None else [[True] * len(row) for row in sim]
    total = 0.0
    for i in range(len(sim)):
        r = _ranking(judge[i], mask[i])
        for k in range(len(r) - 1):  # the last position has no successor
            weight = sum(judge[i][r[k]] - judge[i][r[j]] for j in range(k + 1, len(r))) / (len(r) - 1 - k)
            denominator = sum(math.exp(beta * sim[i][r[j]]) for j in range(k, len(r)))
            total += weight * (beta * sim[i][r[k]] - math.log(denominator))
    return -total / len(sim)


LOSSES = [(rpa_pairwise_loss, reference_pairwise), (rpa_listwise_loss, reference_listwise)]
IDS = ["pairwise", "listwise"]


def _inputs(n=4, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(n, k, generator=g, dtype=torch.float64) * 2 - 1
    # rounded to one decimal: ties occur, so the tie rule is exercised too
    judge = torch.round(torch.rand(n, k, generator=g, dtype=torch.float64) * 10) / 10
    return sim, judge


@pytest.mark.parametrize(("loss_fn", "reference"), LOSSES, ids=IDS)
def test_rpa_matches_explicit_loop_reference(loss_fn, reference):
    sim, judge = _inputs()
    assert loss_fn(sim, judge, 3.0).item() == pytest.approx(reference(sim, judge, 3.0), abs=1e-6)


@pytest.mark.parametrize(("loss_fn", "reference"), LOSSES, ids=IDS)
def test_rpa_mask_excludes_candidates_even_with_nan_scores(loss_fn, reference):
    sim, judge = _inputs(seed=1)
    mask = torch.rand(sim.shape, generator=torch.Generator().manual_seed(5)) > 0.35
    mask[0] = False  # a query with no judged candidate contributes 0 and still counts in 1/N
    mask[1] = False
    mask[1, 2] = True  # a single judged candidate has no pair
    judge_with_holes = judge.masked_fill(~mask, float("nan"))
    got = loss_fn(sim, judge_with_holes, 2.0, mask=mask).item()
    assert got == pytest.approx(reference(sim, judge, 2.0, mask), abs=1e-6)


@pytest.mark.parametrize(("loss_fn", "reference"), LOSSES, ids=IDS)
def test_rpa_masked_candidates_receive_zero_gradient(loss_fn, reference):
    sim, judge = _inputs(seed=2)
    sim.requires_grad_()
    mask = torch.ones_like(judge, dtype=torch.bool)
    mask[:, 1] = False
    loss_fn(sim, judge.masked_fill(~mask, float("nan")), 4.0, mask=mask).backward()
    assert sim.grad.isfinite().all()
    assert (sim.grad[:, 1] == 0).all() and (sim.grad[:, 0] != 0).any()


@pytest.mark.parametrize(("loss_fn", "reference"), LOSSES, ids=IDS)
def test_rpa_gradcheck(loss_fn, reference):
    sim, judge = _inputs(n=3, k=4, seed=3)
    mask = torch.ones_like(judge, dtype=torch.bool)
    mask[2, 3] = False
    assert torch.autograd.gradcheck(lambda s: loss_fn(s, judge, 2.5, mask=mask), (sim.requires_grad_(),))


@pytest.mark.parametrize(("loss_fn", "reference"), LOSSES, ids=IDS)
def test_rpa_is_lower_when_similarities_follow_the_judge_ranking(loss_fn, reference):
    _, judge = _inputs(seed=4)
    assert loss_fn(judge, judge, 5.0) < loss_fn(-judge, judge, 5.0)


def test_rpa_pairwise_does_not_depend_on_candidate_order():
    sim, judge = _inputs(seed=6)
    perm = torch.randperm(sim.shape[1], generator=torch.Generator().manual_seed(0))
    assert rpa_pairwise_loss(sim[:, perm], judge[:, perm], 3.0).item() == pytest.approx(
        rpa_pairwise_loss(sim, judge, 3.0).item(), abs=1e-12
    )


def test_rpa_listwise_ranks_tied_candidates_in_column_order():
    # α ties between columns 0 and 1: the ranking is (0, 1, 2), so column 0 (the positive) leads
    s0, s1, s2 = 0.1, 0.9, 0.0
    sim = torch.tensor([[s0, s1, s2]], dtype=torch.float64)
    judge = torch.tensor([[0.5, 0.5, 0.1]], dtype=torch.float64)
    first = ((0.5 - 0.5) + (0.5 - 0.1)) / 2 * (s0 - math.log(math.exp(s0) + math.exp(s1) + math.exp(s2)))
    second = (0.5 - 0.1) * (s1 - math.log(math.exp(s1) + math.exp(s2)))
    assert rpa_listwise_loss(sim, judge, 1.0).item() == pytest.approx(-(first + second), abs=1e-12)


def test_rpa_rejects_a_mask_of_the_wrong_shape():
    sim, judge = _inputs()
    with pytest.raises(ValueError, match="mask must be a bool"):
        rpa_pairwise_loss(sim, judge, 1.0, mask=torch.ones(2, 2, dtype=torch.bool))


def test_rpa_values_of_a_hand_computed_row():
    """One query, three candidates: sim (0.5, 0.2, 0.1), judge (1, 0.5, 0), β = 2, so s = (1.0, 0.4, 0.2).
    pairwise = −[0.5·logσ(0.6) + 1·logσ(0.8) + 0.5·logσ(0.2)] = 0.888914...
    listwise = −[0.75·(1.0 − log(e^1.0 + e^0.4 + e^0.2)) + 0.5·(0.4 − log(e^0.4 + e^0.2))] = 0.818232...
    (the first weight is the mean gap of candidate 0 to the two after it, (0.5 + 1) / 2)."""
    sim = torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64)
    judge = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    assert rpa_pairwise_loss(sim, judge, 2.0).item() == pytest.approx(0.8889140758815164, abs=1e-12)
    assert rpa_listwise_loss(sim, judge, 2.0).item() == pytest.approx(0.8182322208607278, abs=1e-12)
    # the direction: the same row with the embedder ranking them the other way round costs more
    flipped = sim.flip(1)
    assert rpa_pairwise_loss(flipped, judge, 2.0).item() > 0.8889140758815164
    assert rpa_listwise_loss(flipped, judge, 2.0).item() > 0.8182322208607278
