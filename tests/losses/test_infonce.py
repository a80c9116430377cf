"""infonce_loss against an explicit-loop float64 reference (CLIP's symmetric InfoNCE + MAPLE's extended negatives)."""

import math

import pytest
import torch

from maple.losses.infonce import MAX_LOGIT_SCALE, infonce_loss


def _normalise(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _log_softmax_at(logits: list[float], index: int) -> float:
    top = max(logits)
    return logits[index] - (top + math.log(sum(math.exp(x - top) for x in logits)))


def reference_infonce(query, candidate, scale, hard_negatives=None) -> float:
    """½ [mean_i −log softmax_i(q_i → c_*, h_i*) + mean_i −log softmax_i(c_i → q_*)], one row at a time."""
    q = [_normalise(row) for row in query.tolist()]
    c = [_normalise(row) for row in candidate.tolist()]
    h = [[_normalise(v) for v in row] for row in hard_negatives.tolist()] if hard_negatives is not None else None
    scale = min(float(scale), MAX_LOGIT_SCALE)
    n = len(q)
    q_to_c = c_to_q = 0.0
    for i in range(n):
        logits = [scale * _dot(q[i], c[j]) for j in range(n)]
        if h is not None:
            logits += [scale * _dot(q[i], neg) for neg in h[i]]
        q_to_c -= _log_softmax_at(logits, i)
        c_to_q -= _log_softmax_at([scale * _dot(c[i], q[j]) for j in range(n)], i)
    return 0.5 * (q_to_c / n + c_to_q / n)


def _inputs(n=5, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, k, d, generator=g, dtype=torch.float64),
    )


def test_infonce_matches_explicit_loop_reference():
    query, candidate, _ = _inputs()
    scale = torch.tensor(7.5, dtype=torch.float64)
    assert infonce_loss(query, candidate, scale).item() == pytest.approx(
        reference_infonce(query, candidate, 7.5), abs=1e-6
    )


def test_infonce_hard_negatives_join_each_query_to_candidate_denominator():
    query, candidate, hard = _inputs(seed=1)
    scale = torch.tensor(12.0, dtype=torch.float64)
    got = infonce_loss(query, candidate, scale, hard_negatives=hard).item()
    assert got == pytest.approx(reference_infonce(query, candidate, 12.0, hard), abs=1e-6)


def test_infonce_gradcheck_over_embeddings_hard_negatives_and_logit_scale():
    query, candidate, hard = (t[:3, ..., :4].clone().requires_grad_() for t in _inputs(k=2, seed=2))
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, c, h, s: infonce_loss(q, c, s, hard_negatives=h), (query, candidate, hard, scale)
    )


def test_infonce_clamps_logit_scale_at_100_like_clip():
    query, candidate, _ = _inputs(seed=3)
    big = torch.tensor(1000.0, dtype=torch.float64, requires_grad=True)
    loss = infonce_loss(query, candidate, big)
    loss.backward()
    assert loss.item() == pytest.approx(infonce_loss(query, candidate, torch.tensor(100.0, dtype=torch.float64)).item())
    assert big.grad.item() == 0.0


def test_infonce_normalises_its_inputs():
    query, candidate, hard = _inputs(seed=4)
    scale = torch.tensor(10.0, dtype=torch.float64)
    scaled = infonce_loss(3.0 * query, 0.2 * candidate, scale, hard_negatives=5.0 * hard)
    assert scaled.item() == pytest.approx(infonce_loss(query, candidate, scale, hard_negatives=hard).item(), abs=1e-9)


def test_infonce_rejects_hard_negatives_of_the_wrong_shape():
    query, candidate, hard = _inputs()
    with pytest.raises(ValueError, match=r"hard_negatives must be \(N, k, D\)"):
        infonce_loss(query, candidate, torch.tensor(10.0), hard_negatives=hard[:2])


def test_keys_keep_rows_sharing_a_query_or_a_positive_out_of_each_others_denominators():
    """Two captions of one image (a shared positive) and one caption of two images (a shared query) are not each
    other's negatives: the reference drops those columns from the softmax, row by row; the diagonal always stays."""
    query, candidate, _ = _inputs(n=5, seed=4)
    query_keys, candidate_keys = torch.tensor([1, 2, 3, 2, 5]), torch.tensor([7, 8, 7, 9, 6])
    got = infonce_loss(query, candidate, torch.tensor(6.0, dtype=torch.float64), query_keys=query_keys,
                       candidate_keys=candidate_keys).item()
    q = [_normalise(r) for r in query.tolist()]
    c = [_normalise(r) for r in candidate.tolist()]
    qk, ck = query_keys.tolist(), candidate_keys.tolist()
    total = 0.0
    for i in range(5):
        kept = [j for j in range(5) if j == i or (qk[j] != qk[i] and ck[j] != ck[i])]
        total -= _log_softmax_at([6.0 * _dot(q[i], c[j]) for j in kept], kept.index(i)) / 10
        total -= _log_softmax_at([6.0 * _dot(c[i], q[j]) for j in kept], kept.index(i)) / 10
    assert got == pytest.approx(total, abs=1e-9)
    assert got < infonce_loss(query, candidate, torch.tensor(6.0, dtype=torch.float64)).item()
