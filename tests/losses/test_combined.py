"""MapleLoss: total = λ·RPA + (1−λ)·InfoNCE + γ·KL from LossConfig, over {c+, hard negatives} and their scores."""

import math

import pytest
import torch

from maple.losses import MapleLoss, infonce_loss, rpa_listwise_loss, rpa_pairwise_loss, soft_label_kl_loss
from maple.losses.config import LossConfig

N, K, D = 4, 3, 6


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(N, D, generator=g, dtype=torch.float64),
        "positive": torch.randn(N, D, generator=g, dtype=torch.float64),
        "hard_negatives": torch.randn(N, K, D, generator=g, dtype=torch.float64),
        "positive_score": torch.rand(N, generator=g, dtype=torch.float64),
        "hard_negative_scores": torch.rand(N, K, generator=g, dtype=torch.float64),
    }


def _judged(b) -> dict:
    """The keyword inputs of MapleLoss.forward: hard negatives and judge scores."""
    return {k: v for k, v in b.items() if k not in ("query", "positive")}


def _candidate_sims(b) -> torch.Tensor:
    """cos(q_i, c) over [c+, h_i1..h_iK], one dot product at a time."""
    rows = []
    for i in range(N):
        q = b["query"][i] / b["query"][i].norm()
        cands = [b["positive"][i]] + list(b["hard_negatives"][i])
        rows.append([float(q @ (c / c.norm())) for c in cands])
    return torch.tensor(rows, dtype=torch.float64)


def _scores(b) -> torch.Tensor:
    return torch.cat([b["positive_score"][:, None], b["hard_negative_scores"]], dim=1)


def test_maple_loss_total_is_lambda_rpa_plus_one_minus_lambda_infonce_plus_gamma_kl():
    cfg = LossConfig(
        rpa="pairwise",
        rpa_weight=0.3,
        rpa_beta=7.0,
        kl_weight=0.2,
        kl_temperature=0.1,
        hard_negatives=True,
        temperature=0.05,
    )
    b = _batch()
    out = MapleLoss(cfg).double()(b["query"], b["positive"], **_judged(b))
    infonce = infonce_loss(
        b["query"], b["positive"], torch.tensor(20.0, dtype=torch.float64), hard_negatives=b["hard_negatives"]
    )
    rpa = rpa_pairwise_loss(_candidate_sims(b), _scores(b), 7.0)
    kl = soft_label_kl_loss(_candidate_sims(b), _scores(b), 0.1)
    assert out["infonce"].item() == pytest.approx(infonce.item(), abs=1e-6)
    assert out["rpa"].item() == pytest.approx(rpa.item(), abs=1e-6)
    assert out["kl"].item() == pytest.approx(kl.item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * rpa.item() + 0.7 * infonce.item() + 0.2 * kl.item(), abs=1e-6)


def test_maple_loss_uses_listwise_rpa_when_configured():
    cfg = LossConfig(rpa="listwise", rpa_weight=0.5, rpa_beta=3.0)
    b = _batch(seed=1)
    out = MapleLoss(cfg).double()(b["query"], b["positive"], **_judged(b))
    assert out["rpa"].item() == pytest.approx(rpa_listwise_loss(_candidate_sims(b), _scores(b), 3.0).item(), abs=1e-6)


def test_maple_loss_without_rpa_ignores_lambda():
    cfg = LossConfig(rpa="none", rpa_weight=0.3, kl_weight=0.5)
    b = _batch(seed=2)
    out = MapleLoss(cfg).double()(b["query"], b["positive"], **_judged(b))
    assert "rpa" not in out
    assert out["loss"].item() == pytest.approx(out["infonce"].item() + 0.5 * out["kl"].item(), abs=1e-9)


def test_maple_loss_infonce_alone_needs_no_hard_negatives_or_scores():
    b = _batch(seed=3)
    out = MapleLoss(LossConfig()).double()(b["query"], b["positive"])
    assert set(out) == {"loss", "infonce", "logit_scale"}
    assert out["loss"].item() == pytest.approx(
        infonce_loss(b["query"], b["positive"], torch.tensor(20.0, dtype=torch.float64)).item()
    )


@pytest.mark.parametrize("cfg", [LossConfig(rpa="pairwise"), LossConfig(kl_weight=0.1)], ids=["rpa", "kl"])
def test_maple_loss_missing_judge_scores_fail_naming_the_judged_columns(cfg):
    b = _batch(seed=4)
    with pytest.raises(ValueError, match="positive_score, hard_negative_scores"):
        MapleLoss(cfg).double()(b["query"], b["positive"], hard_negatives=b["hard_negatives"])


def test_maple_loss_rpa_without_hard_negatives_fails():
    b = _batch(seed=5)
    with pytest.raises(ValueError, match="needs hard negatives"):
        MapleLoss(LossConfig(rpa="listwise")).double()(b["query"], b["positive"], positive_score=b["positive_score"])


def test_maple_loss_excludes_nan_judge_scores_by_default():
    cfg = LossConfig(rpa="pairwise", kl_weight=0.3)
    b = _batch(seed=6)
    b["hard_negative_scores"][1, 2] = float("nan")
    b["positive_score"][3] = float("nan")
    out = MapleLoss(cfg).double()(b["query"], b["positive"], **_judged(b))
    mask = _scores(b).isfinite()
    assert out["rpa"].item() == pytest.approx(
        rpa_pairwise_loss(_candidate_sims(b), _scores(b), cfg.rpa_beta, mask).item(), abs=1e-6
    )
    assert math.isfinite(out["loss"].item())


def test_maple_loss_rejects_a_score_mask_that_marks_nan_as_valid():
    b = _batch(seed=7)
    b["hard_negative_scores"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="score_mask marks a judge score as valid"):
        MapleLoss(LossConfig(rpa="pairwise")).double()(
            b["query"],
            b["positive"],
            **_judged(b),
            score_mask=torch.ones(N, K + 1, dtype=torch.bool),
        )


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
