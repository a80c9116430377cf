"""MapleLoss against an independent float64 reference written one row and one pair at a time (not the project's own
loss functions): total = L_InfoNCE + λ·L_RPA + γ·L_KL (additive) or λ·L_RPA + (1−λ)·L_InfoNCE + γ·L_KL (convex), RPA
over the preference ranking or over {c+, hard negatives}, InfoNCE one direction per softmax; values and gradients."""

import math

import pytest
import torch

from maple.losses.combined import MapleLoss
from maple.losses.config import LossConfig

N, K, P, D = 4, 3, 5, 6


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(N, D, generator=g, dtype=torch.float64),
        "positive": torch.randn(N, D, generator=g, dtype=torch.float64),
        "hard_negatives": torch.randn(N, K, D, generator=g, dtype=torch.float64),
        "positive_score": torch.rand(N, generator=g, dtype=torch.float64),
        "hard_negative_scores": torch.rand(N, K, generator=g, dtype=torch.float64),
        "ranking": torch.randn(N, P, D, generator=g, dtype=torch.float64),
        "ranking_scores": torch.rand(N, P, generator=g, dtype=torch.float64),
    }


def _judged(b) -> dict:
    return {k: v for k, v in b.items() if k not in ("query", "positive")}


# --- the reference: explicit loops over rows and pairs -----------------------------------------------------------

def _unit(v):
    return v / torch.sqrt((v * v).sum())


def _logsumexp(xs):
    top = max(float(x) for x in xs)
    return top + torch.log(sum(torch.exp(x - top) for x in xs))


def ref_infonce(q, c, h, scale, groups=None):
    """½ [mean_i −log softmax(q_i → same-group c_j, h_i) + mean_i −log softmax(c_i → same-group q_j)]."""
    n = len(q)
    groups = groups or [0] * n
    qc = cq = 0
    for i in range(n):
        same = [j for j in range(n) if groups[j] == groups[i]]
        logits = [scale * (_unit(q[i]) @ _unit(c[j])) for j in same]
        if h is not None:
            logits += [scale * (_unit(q[i]) @ _unit(neg)) for neg in h[i]]
        qc = qc - (logits[same.index(i)] - _logsumexp(logits))
        back = [scale * (_unit(c[i]) @ _unit(q[j])) for j in same]
        cq = cq - (back[same.index(i)] - _logsumexp(back))
    return 0.5 * (qc / n + cq / n)


def ref_rpa_pairwise(sims, alphas, beta):
    total = 0
    for s, a in zip(sims, alphas):
        for x in range(len(s)):
            for y in range(len(s)):
                if a[x] > a[y]:
                    total = total + (a[x] - a[y]) * torch.nn.functional.logsigmoid(beta * s[x] - beta * s[y])
    return -total / len(sims)


def ref_rpa_listwise(sims, alphas, beta):
    total = 0
    for s, a in zip(sims, alphas):
        order = sorted(range(len(s)), key=lambda j: (-float(a[j]), j))
        for k in range(len(order) - 1):
            rest = order[k + 1:]
            weight = sum(a[order[k]] - a[j] for j in rest) / len(rest)
            total = total + weight * (beta * s[order[k]] - _logsumexp([beta * s[j] for j in order[k:]]))
    return -total / len(sims)


def ref_kl(sims, scores, tau, tau_q):
    total = 0
    for s, a in zip(sims, scores):
        log_p = [x / tau - _logsumexp([y / tau for y in s]) for x in s]
        log_q = [x / tau_q - _logsumexp([y / tau_q for y in a]) for x in a]
        total = total + 0.5 * sum((torch.exp(lp) - torch.exp(lq)) * (lp - lq) for lp, lq in zip(log_p, log_q))
    return total / len(sims)


def _mined(b):
    """sims and scores over [c+, h_1..h_K], one dot product at a time."""
    sims = [[_unit(b["query"][i]) @ _unit(c) for c in [b["positive"][i], *b["hard_negatives"][i]]] for i in range(N)]
    scores = [[b["positive_score"][i], *b["hard_negative_scores"][i]] for i in range(N)]
    return sims, scores


def _ranked(b):
    sims = [[_unit(b["query"][i]) @ _unit(c) for c in b["ranking"][i]] for i in range(N)]
    return sims, [list(b["ranking_scores"][i]) for i in range(N)]


def _scale(cfg: LossConfig) -> float:
    """1/τ as the module holds it (a float32 parameter: log(1/τ) rounded, then exp)."""
    return math.exp(float(torch.tensor(math.log(1.0 / cfg.temperature), dtype=torch.float32)))


def reference_total(b, cfg: LossConfig, groups=None):
    scale = _scale(cfg)
    infonce = ref_infonce(b["query"], b["positive"], b["hard_negatives"] if cfg.hard_negatives else None, scale,
                          groups)
    rpa_fn = ref_rpa_pairwise if cfg.rpa == "pairwise" else ref_rpa_listwise
    rpa = rpa_fn(*(_ranked(b) if cfg.rpa_candidates == "ranking" else _mined(b)), cfg.rpa_beta)
    kl = ref_kl(*_mined(b), cfg.kl_temperature, cfg.kl_judge_temperature or cfg.kl_temperature)
    lam, gamma = cfg.rpa_weight, cfg.kl_weight
    if cfg.combine == "convex":
        return lam * rpa + (1 - lam) * infonce + gamma * kl, (infonce, rpa, kl)
    return infonce + lam * rpa + gamma * kl, (infonce, rpa, kl)


CONFIGS = {
    "additive-ranking-listwise": LossConfig(rpa="listwise", rpa_weight=0.7, rpa_beta=4.0, kl_weight=0.2,
                                            kl_temperature=0.1, kl_judge_temperature=0.3, hard_negatives=True),
    "additive-ranking-pairwise": LossConfig(rpa="pairwise", rpa_weight=1.5, rpa_beta=3.0, kl_weight=0.4,
                                            kl_temperature=0.2, hard_negatives=False),
    "convex-mined-pairwise": LossConfig(rpa="pairwise", rpa_weight=0.3, rpa_beta=7.0, kl_weight=0.2,
                                        kl_temperature=0.1, hard_negatives=True, rpa_candidates="mined",
                                        combine="convex"),
    "convex-mined-listwise": LossConfig(rpa="listwise", rpa_weight=0.6, rpa_beta=2.0, kl_weight=0.5,
                                        kl_temperature=0.05, rpa_candidates="mined", combine="convex"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_total_and_every_term_equal_the_reference(name):
    cfg = CONFIGS[name]
    b = _batch(seed=len(name))
    out = MapleLoss(cfg).double()(b["query"], b["positive"], **_judged(b))
    total, (infonce, rpa, kl) = reference_total(b, cfg)
    assert out["infonce"].item() == pytest.approx(float(infonce), abs=1e-9)
    assert out["rpa"].item() == pytest.approx(float(rpa), abs=1e-9)
    assert out["kl"].item() == pytest.approx(float(kl), abs=1e-9)
    assert out["loss"].item() == pytest.approx(float(total), abs=1e-9)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_equal_the_reference_and_pass_gradcheck(name):
    cfg = CONFIGS[name].model_copy(update={"learnable_temperature": False})
    b = _batch(seed=10 + len(name))
    leaves = ("query", "positive", "hard_negatives", "ranking")
    inputs = {k: v.clone().requires_grad_(k in leaves) for k, v in b.items()}
    loss_fn = MapleLoss(cfg).double()
    loss_fn(inputs["query"], inputs["positive"], **_judged(inputs))["loss"].backward()
    reference = {k: v.clone().requires_grad_(k in leaves) for k, v in b.items()}
    reference_total(reference, cfg)[0].backward()
    for key in leaves:
        torch.testing.assert_close(inputs[key].grad, reference[key].grad, rtol=1e-9, atol=1e-11, msg=key)

    def total(query, positive, hard_negatives, ranking):
        return loss_fn(query, positive, hard_negatives=hard_negatives, ranking=ranking,
                       positive_score=b["positive_score"], hard_negative_scores=b["hard_negative_scores"],
                       ranking_scores=b["ranking_scores"])["loss"]

    assert torch.autograd.gradcheck(total, tuple(b[k].clone().requires_grad_() for k in leaves))


def test_groups_make_one_infonce_per_direction_the_row_weighted_mean_of_the_halves():
    """A mixed table trains to the same loss as its per-direction halves (weighted by their rows)."""
    b = _batch(seed=20)
    groups = torch.tensor([0, 1, 0, 1])
    mixed = MapleLoss(LossConfig()).double()(b["query"], b["positive"], groups=groups)["infonce"].item()
    halves = [MapleLoss(LossConfig()).double()(b["query"][groups == g], b["positive"][groups == g])["infonce"].item()
              for g in (0, 1)]
    assert mixed == pytest.approx((2 * halves[0] + 2 * halves[1]) / 4, abs=1e-12)
    reference = ref_infonce(b["query"], b["positive"], None, _scale(LossConfig()), groups.tolist())
    assert mixed == pytest.approx(float(reference), abs=1e-12)


def test_maple_loss_infonce_alone_needs_no_hard_negatives_or_scores():
    b = _batch(seed=3)
    out = MapleLoss(LossConfig()).double()(b["query"], b["positive"])
    assert set(out) == {"loss", "infonce", "logit_scale"}
    reference = ref_infonce(b["query"], b["positive"], None, _scale(LossConfig()))
    assert out["loss"].item() == pytest.approx(float(reference), abs=1e-12)


@pytest.mark.parametrize("cfg", [LossConfig(rpa="pairwise", rpa_candidates="mined"), LossConfig(kl_weight=0.1)],
                         ids=["rpa", "kl"])
def test_maple_loss_missing_judge_scores_fail_naming_the_judged_columns(cfg):
    b = _batch(seed=4)
    with pytest.raises(ValueError, match="positive_score, hard_negative_scores"):
        MapleLoss(cfg).double()(b["query"], b["positive"], hard_negatives=b["hard_negatives"])


def test_maple_loss_rpa_over_the_ranking_without_one_fails_naming_the_columns():
    b = _batch(seed=5)
    with pytest.raises(ValueError, match="ranking_texts / ranking_images"):
        MapleLoss(LossConfig(rpa="listwise")).double()(b["query"], b["positive"])


def test_maple_loss_rpa_over_mined_candidates_without_hard_negatives_fails():
    b = _batch(seed=5)
    with pytest.raises(ValueError, match="needs hard negatives"):
        MapleLoss(LossConfig(rpa="listwise", rpa_candidates="mined")).double()(
            b["query"], b["positive"], positive_score=b["positive_score"])


def test_nan_judge_scores_and_padded_ranking_slots_are_left_out():
    cfg = LossConfig(rpa="pairwise", kl_weight=0.3)
    b = _batch(seed=6)
    b["hard_negative_scores"][1, 2] = float("nan")
    b["ranking_scores"][0, 3:] = float("nan")  # a short ranking, padded
    out = MapleLoss(cfg).double()(b["query"], b["positive"], **_judged(b))
    sims, scores = _ranked(b)
    sims[0], scores[0] = sims[0][:3], scores[0][:3]
    assert out["rpa"].item() == pytest.approx(float(ref_rpa_pairwise(sims, scores, cfg.rpa_beta)), abs=1e-9)
    mined_sims, mined_scores = _mined(b)
    del mined_sims[1][3], mined_scores[1][3]
    assert out["kl"].item() == pytest.approx(float(ref_kl(mined_sims, mined_scores, 0.02, 0.02)), abs=1e-9)


def test_maple_loss_rejects_a_score_mask_that_marks_nan_as_valid():
    b = _batch(seed=7)
    b["hard_negative_scores"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="score_mask marks a judge score as valid"):
        MapleLoss(LossConfig(kl_weight=0.5)).double()(
            b["query"], b["positive"], **_judged(b), score_mask=torch.ones(N, K + 1, dtype=torch.bool))


def test_negclip_negatives_cannot_feed_the_judge_scored_terms():
    with pytest.raises(ValueError, match="hard_negative_source=rewrites"):
        MapleLoss(LossConfig(hard_negatives=True, hard_negative_source="rewrites", kl_weight=0.1))


def test_maple_loss_learnable_logit_scale_starts_at_one_over_temperature_and_trains():
    loss_fn = MapleLoss(LossConfig(temperature=0.07, learnable_temperature=True)).double()
    assert [name for name, _ in loss_fn.named_parameters()] == ["log_logit_scale"]
    assert loss_fn.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    b = _batch(seed=8)
    out = loss_fn(b["query"], b["positive"])
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07)
    out["loss"].backward()
    assert loss_fn.log_logit_scale.grad.abs().item() > 0


def test_maple_loss_fixed_temperature_has_no_parameter():
    loss_fn = MapleLoss(LossConfig(temperature=0.05, learnable_temperature=False))
    assert list(loss_fn.parameters()) == []
    assert loss_fn.logit_scale().item() == pytest.approx(20.0)


def test_maple_loss_with_no_term_configured_is_rejected():
    with pytest.raises(ValueError, match="no loss term is on"):
        MapleLoss(LossConfig(infonce=False, rpa="none", kl_weight=0.0))
