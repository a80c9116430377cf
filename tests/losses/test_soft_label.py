"""UniME-V2's soft-label alignment against an explicit-loop float64 reference; masks; gradcheck."""

import math

import pytest
import torch

from maple.losses.soft_label import soft_label_kl_loss


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def reference_soft_label(sim, judge, temperature, mask=None, judge_temperature=None) -> float:
    """mean_i ½ [KL(P_i‖Q_i) + KL(Q_i‖P_i)] over each row's valid candidates."""
    judge_temperature = judge_temperature or temperature
    sim, judge = sim.tolist(), judge.tolist()
    mask = mask.tolist() if mask is not None else [[True] * len(row) for row in sim]
    total = 0.0
    for i in range(len(sim)):
        cols = [j for j in range(len(sim[i])) if mask[i][j]]
        if not cols:
            continue
        p = _softmax([sim[i][j] / temperature for j in cols])
        q = _softmax([judge[i][j] / judge_temperature for j in cols])
        total += 0.5 * (_kl(p, q) + _kl(q, p))
    return total / len(sim)


def _inputs(n=4, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(n, k, generator=g, dtype=torch.float64) * 2 - 1
    return sim, torch.rand(n, k, generator=g, dtype=torch.float64)


def test_soft_label_kl_matches_explicit_loop_reference():
    sim, judge = _inputs()
    assert soft_label_kl_loss(sim, judge, 0.1).item() == pytest.approx(reference_soft_label(sim, judge, 0.1), abs=1e-6)


def test_soft_label_kl_default_temperature_is_unime_v2_002_on_realistic_cosines():
    """τ = 0.02 with trained-model cosines (0.2..0.9) and coarse judge scores: both softmaxes are nearly one-hot."""
    g = torch.Generator().manual_seed(1)
    sim = 0.2 + 0.7 * torch.rand(6, 9, generator=g, dtype=torch.float64)
    judge = torch.round(torch.rand(6, 9, generator=g, dtype=torch.float64) * 4) / 4
    got = soft_label_kl_loss(sim, judge).item()
    assert got == pytest.approx(reference_soft_label(sim, judge, 0.02), rel=1e-9)
    assert math.isfinite(got) and got > 1.0  # far from 0: one-hot targets against a different argmax


def test_soft_label_judge_temperature_is_set_apart_from_the_embedders():
    sim, judge = _inputs(seed=3)
    got = soft_label_kl_loss(sim, judge, 0.02, judge_temperature=0.2).item()
    assert got == pytest.approx(reference_soft_label(sim, judge, 0.02, judge_temperature=0.2), rel=1e-9)
    assert got != pytest.approx(soft_label_kl_loss(sim, judge, 0.02).item(), rel=1e-3)


def test_soft_label_kl_mask_excludes_candidates_even_with_nan_scores():
    sim, judge = _inputs(seed=2)
    mask = torch.tensor([[True, True, False, True, True], [False] * 5, [True, False, False, False, False], [True] * 5])
    got = soft_label_kl_loss(sim, judge.masked_fill(~mask, float("nan")), 0.2, mask=mask).item()
    assert got == pytest.approx(reference_soft_label(sim, judge, 0.2, mask), abs=1e-6)


def test_soft_label_kl_masked_candidates_receive_zero_gradient():
    sim, judge = _inputs(seed=3)
    sim.requires_grad_()
    mask = torch.ones_like(judge, dtype=torch.bool)
    mask[:, 4] = False
    mask[1] = False
    soft_label_kl_loss(sim, judge.masked_fill(~mask, float("nan")), 0.2, mask=mask).backward()
    assert sim.grad.isfinite().all()
    assert (sim.grad[~mask] == 0).all() and (sim.grad[mask] != 0).any()


def test_soft_label_kl_gradcheck():
    sim, judge = _inputs(n=3, k=4, seed=4)
    mask = torch.ones_like(judge, dtype=torch.bool)
    mask[0, 1] = False
    assert torch.autograd.gradcheck(lambda s: soft_label_kl_loss(s, judge, 0.3, mask=mask), (sim.requires_grad_(),))


def test_soft_label_kl_is_zero_when_similarities_equal_judge_scores():
    _, judge = _inputs(seed=5)
    assert soft_label_kl_loss(judge.clone(), judge, 0.05).item() == pytest.approx(0.0, abs=1e-12)
