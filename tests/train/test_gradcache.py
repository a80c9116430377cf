"""GradCache gives the full-batch step's gradients in the memory of one chunk, dropout included."""

import pytest
import torch
from torch import nn

from maple.losses.combined import MapleLoss
from maple.losses.config import LossConfig
from maple.train.gradcache import chunk_batch, gradcache_step

N, K, D_IN, D, CHUNK = 10, 3, 6, 5, 4  # chunks of 4, 4, 2: the last one short


def _tower() -> nn.Module:
    return nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, D))


def _setup():
    """Two towers with dropout, the loss (with its learnable temperature) and one batch; identical on every call."""
    torch.manual_seed(0)
    query_tower, candidate_tower = _tower().train(), _tower().train()
    loss_module = MapleLoss(
        LossConfig(hard_negatives=True, rpa="pairwise", rpa_weight=0.4, kl_weight=0.1, kl_temperature=0.1,
                   rpa_candidates="mined", combine="convex")
    )
    g = torch.Generator().manual_seed(1)
    batch = {
        "query": torch.randn(N, D_IN, generator=g),
        "positive": torch.randn(N, D_IN, generator=g),
        "hard_negatives": torch.randn(N, K, D_IN, generator=g),
        "positive_score": torch.rand(N, generator=g),
        "hard_negative_scores": torch.rand(N, K, generator=g),
    }

    def loss_fn(q, p, h):
        return loss_module(
            q,
            p,
            hard_negatives=h,
            positive_score=batch["positive_score"],
            hard_negative_scores=batch["hard_negative_scores"],
        )

    streams = [
        (query_tower, chunk_batch(batch["query"], CHUNK)),
        (candidate_tower, chunk_batch(batch["positive"], CHUNK)),
        (candidate_tower, chunk_batch(batch["hard_negatives"], CHUNK)),
    ]
    parameters = [*query_tower.parameters(), *candidate_tower.parameters(), *loss_module.parameters()]
    return streams, loss_fn, parameters


def _full_batch_step(streams, loss_fn):
    """The step GradCache replaces: every chunk's graph kept at once, one backward (same chunking of randomness)."""
    embeddings = [torch.cat([encode(chunk) for chunk in chunks]) for encode, chunks in streams]
    out = loss_fn(*embeddings)
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}


def test_the_test_towers_draw_new_dropout_masks_on_every_call():
    streams, _, _ = _setup()
    encode, chunks = streams[0]
    assert not torch.equal(encode(chunks[0]), encode(chunks[0]))


def test_gradcache_parameter_gradients_equal_the_full_batch_step():
    streams, loss_fn, parameters = _setup()
    gradcache_step(streams, loss_fn)
    got = [p.grad.clone() for p in parameters]

    streams, loss_fn, parameters = _setup()
    _full_batch_step(streams, loss_fn)
    for g, p in zip(got, parameters, strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=0)


def test_gradcache_returns_the_full_batch_loss_terms():
    streams, loss_fn, _ = _setup()
    got = gradcache_step(streams, loss_fn)
    streams, loss_fn, _ = _setup()
    want = _full_batch_step(streams, loss_fn)
    assert set(got) == {"loss", "infonce", "rpa", "kl", "logit_scale"}
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0)
        assert not got[key].requires_grad


def test_gradcache_leaves_the_rng_where_the_full_batch_step_leaves_it():
    streams, loss_fn, _ = _setup()
    gradcache_step(streams, loss_fn)
    after_gradcache = torch.rand(3)
    streams, loss_fn, _ = _setup()
    _full_batch_step(streams, loss_fn)
    assert torch.equal(after_gradcache, torch.rand(3))


def test_gradcache_backward_hook_flags_only_the_final_backward_as_last():
    streams, loss_fn, _ = _setup()
    flags = []

    def backward(tensor, is_last):
        flags.append(is_last)
        tensor.backward()

    gradcache_step(streams, loss_fn, backward=backward)
    num_chunks = sum(len(chunks) for _, chunks in streams)
    assert flags == [False] * num_chunks + [True]  # the loss, then one per chunk


def test_gradcache_rejects_an_encoder_without_trainable_parameters():
    streams, loss_fn, _ = _setup()
    for p in streams[0][0].parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="stream 0's encoder produced no gradient"):
        gradcache_step(streams, loss_fn)


def test_chunk_batch_splits_every_tensor_of_a_mapping_along_dim_0():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "attention_mask": torch.ones(5, 2), "padding": "longest"}
    chunks = chunk_batch(batch, 2)
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), batch["input_ids"])
    assert all(c["padding"] == "longest" for c in chunks)
