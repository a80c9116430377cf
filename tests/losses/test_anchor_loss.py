"""PAL's relative representation, per-anchor pooling and loss against explicit float64 loops."""

import math

import pytest
import torch

from maple.losses.anchor import anchor_embedding, anchor_pool, pal_loss, relative_representation


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _reference_pool(tokens, mask, anchors, tau_pool):
    """Explicit loops: for each sample and anchor, softmax over real tokens of cos/τ_p, weighted mean of cos."""
    out = []
    for b in range(len(tokens)):
        row = []
        for a in anchors:
            cos = [_cos(tokens[b][i], a) for i in range(len(tokens[b])) if mask[b][i]]
            top = max(c / tau_pool for c in cos)
            w = [math.exp(c / tau_pool - top) for c in cos]
            row.append(sum(wi * c for wi, c in zip(w, cos)) / sum(w))
        out.append(row)
    return out


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    anchors = torch.randn(6, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return tokens, mask, anchors


def test_relative_representation_is_cosine_of_each_token_to_each_anchor(inputs):
    tokens, _, anchors = inputs
    got = relative_representation(tokens, anchors)
    assert got.shape == (3, 5, 6)
    for b in range(3):
        for i in range(5):
            for k in range(6):
                assert got[b, i, k].item() == pytest.approx(_cos(tokens[b, i].tolist(), anchors[k].tolist()), abs=1e-12)


def test_anchor_pool_matches_explicit_loop_over_real_tokens(inputs):
    tokens, mask, anchors = inputs
    got = anchor_pool(relative_representation(tokens, anchors), mask, tau_pool=0.03)
    want = _reference_pool(tokens.tolist(), mask.tolist(), anchors.tolist(), 0.03)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-10)


def test_anchor_pool_ignores_the_values_of_padding_tokens(inputs):
    tokens, mask, anchors = inputs
    changed = tokens.clone()
    changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), 4, dtype=torch.float64)
    assert torch.equal(anchor_embedding(tokens, mask, anchors), anchor_embedding(changed, mask, anchors))


def test_anchor_pool_at_low_temperature_approaches_the_best_token_cosine(inputs):
    tokens, mask, anchors = inputs
    rel = relative_representation(tokens, anchors)
    best = rel.masked_fill(~mask[..., None], -2).amax(dim=1)
    assert torch.allclose(anchor_pool(rel, mask, tau_pool=1e-4), best, atol=1e-6)


def test_anchor_embedding_is_l2_normalised_k_vector(inputs):
    tokens, mask, anchors = inputs
    emb = anchor_embedding(tokens, mask, anchors, tau_pool=0.03)
    assert emb.shape == (3, 6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_anchor_pool_rejects_a_row_without_real_tokens(inputs):
    tokens, mask, anchors = inputs
    mask = mask.clone()
    mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        anchor_pool(relative_representation(tokens, anchors), mask)


def test_pal_loss_matches_explicit_symmetric_infonce_at_fixed_temperature():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    zi = [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in img.tolist()]
    zt = [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in txt.tolist()]
    sim = [[sum(a * b for a, b in zip(zi[i], zt[j])) / 0.07 for j in range(4)] for i in range(4)]
    i2t = -sum(sim[i][i] - math.log(sum(math.exp(s) for s in sim[i])) for i in range(4)) / 4
    t2i = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(4))) for j in range(4)) / 4
    assert pal_loss(img, txt, tau=0.07, gather=False).item() == pytest.approx((i2t + t2i) / 2, abs=1e-10)


def test_anchor_embedding_gradcheck_in_anchors_and_tokens(inputs):
    tokens, mask, anchors = inputs
    tokens, anchors = tokens.clone().requires_grad_(), anchors.clone().requires_grad_()
    # τ_p = 0.3 keeps the softmax away from saturation, where finite differences lose precision.
    assert torch.autograd.gradcheck(lambda t, a: anchor_embedding(t, mask, a, tau_pool=0.3), (tokens, anchors))


def test_pal_loss_gradcheck_through_pooling_in_both_modalities():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 6, 7, generator=g, dtype=torch.float64)
    ax = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ay = torch.randn(8, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y_mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 2 + [0] * 4], dtype=torch.bool)

    def loss(ax, ay):
        return pal_loss(anchor_embedding(x, None, ax, 0.3), anchor_embedding(y, y_mask, ay, 0.3), gather=False)

    assert torch.autograd.gradcheck(loss, (ax, ay))
