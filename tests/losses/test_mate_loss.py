"""MATE's stage loss (maple.losses.mate) against explicit-loop float64 references, and gradcheck."""

import math

import pytest
import torch

from maple.losses.mate import MateLoss, alignment_distance, mate_alignment_loss


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def reference_mate(projected, target, scale, distance, weight):
    """½ [mean_i CE(p_i → t_*) + mean_i CE(t_i → p_*)] + w · distance, one row at a time."""
    p = [_unit(r) for r in projected.tolist()]
    t = [_unit(r) for r in target.tolist()]
    n = len(p)
    infonce = 0.0
    for i in range(n):
        for a, b in ((p, t), (t, p)):
            logits = [scale * _dot(a[i], b[j]) for j in range(n)]
            infonce -= (logits[i] - math.log(sum(math.exp(x) for x in logits))) / (2 * n)
    if distance == "cosine":
        dist = sum(1 - _dot(p[i], t[i]) for i in range(n)) / n
    else:
        raw_p, raw_t = projected.tolist(), target.tolist()
        dist = sum((x - y) ** 2 for i in range(n) for x, y in zip(raw_p[i], raw_t[i])) / (n * len(raw_p[0]))
    return infonce + weight * dist, infonce, dist


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_mate_loss_matches_explicit_loop_reference(distance):
    g = torch.Generator().manual_seed(0)
    projected = torch.randn(5, 7, generator=g, dtype=torch.float64)
    target = torch.nn.functional.normalize(torch.randn(5, 7, generator=g, dtype=torch.float64), dim=-1)
    terms = mate_alignment_loss(projected, target, torch.tensor(8.0, dtype=torch.float64), distance=distance,
                                distance_weight=0.3, gather=False)
    loss, infonce, dist = reference_mate(projected, target, 8.0, distance, 0.3)
    assert terms["loss"].item() == pytest.approx(loss, abs=1e-10)
    assert terms["infonce"].item() == pytest.approx(infonce, abs=1e-10)
    assert terms["distance"].item() == pytest.approx(dist, abs=1e-10)


def test_distance_is_zero_exactly_when_projection_meets_the_target():
    target = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    for kind in ("cosine", "mse"):
        assert alignment_distance(target.clone(), target, kind).item() == pytest.approx(0.0, abs=1e-12)
        assert alignment_distance(target + 0.1, target, kind).item() > 0


def test_cosine_distance_ignores_scale_and_mse_does_not():
    target = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    assert alignment_distance(3 * target, target, "cosine").item() == pytest.approx(0.0, abs=1e-12)
    assert alignment_distance(3 * target, target, "mse").item() > 0.1


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_mate_loss_gradcheck(distance):
    g = torch.Generator().manual_seed(1)
    projected = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 5, generator=g, dtype=torch.float64)
    scale = torch.tensor(5.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: mate_alignment_loss(p, target, scale, distance=distance, gather=False)["loss"], (projected,))


def test_module_uses_the_fixed_temperature():
    projected, target = torch.randn(3, 4), torch.randn(3, 4)
    terms = MateLoss(temperature=0.1, distance="mse", distance_weight=2.0, gather=False)(projected, target)
    expected = mate_alignment_loss(projected, target, torch.tensor(10.0), distance="mse", distance_weight=2.0,
                                   gather=False)
    assert torch.allclose(terms["loss"], expected["loss"])


def test_unknown_distance_names_the_config_key():
    with pytest.raises(ValueError, match="model.mate.distance"):
        alignment_distance(torch.zeros(2, 3), torch.zeros(2, 3), "l1")  # type: ignore[arg-type]
