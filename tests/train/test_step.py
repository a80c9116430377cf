"""The training step alone: no Ray, no torch.distributed."""

from __future__ import annotations

import copy

import pytest
import torch

from maple.losses.combined import MapleLoss
from maple.losses.config import LossConfig
from maple.models.config import ModelConfig
from maple.models.families import build_embedder
from maple.models.lora import select_trainable
from maple.train.batch import collate_judged, collate_pairs
from maple.train.step import train_step
from tests.fixtures.rows import numpy_rows


def _setup(loss: LossConfig, seed: int = 0):
    model = build_embedder(ModelConfig(), seed=seed)
    select_trainable(model, "all")
    loss_fn = MapleLoss(loss)
    return model, loss_fn


def _sgd(model, loss_fn):
    return torch.optim.SGD([p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad], lr=0.5)


def test_train_step_lowers_the_loss_on_a_repeated_batch_without_ray(world_pairs):
    model, loss_fn = _setup(LossConfig())
    batch = collate_pairs(model, numpy_rows(world_pairs.slice(0, 16)), epoch=0, seed=0)
    optimizer = torch.optim.AdamW([p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad],
                                  lr=1e-3)
    losses = [train_step(model, loss_fn, batch, optimizer)["loss"] for _ in range(12)]
    assert losses[-1] < 0.8 * losses[0]


def test_judged_step_reports_every_configured_loss_term(world_judged):
    loss = LossConfig(rpa="listwise", kl_weight=0.5, hard_negatives=True)
    model, loss_fn = _setup(loss)
    batch = collate_judged(model, numpy_rows(world_judged.slice(0, 8)), loss)
    assert batch.ranking is not None and batch.hard_negatives is not None
    terms = train_step(model, loss_fn, batch, _sgd(model, loss_fn))
    assert {"loss", "infonce", "rpa", "kl", "logit_scale"} <= set(terms)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())


@pytest.mark.parametrize("kind", ["pairs", "judged"])
def test_gradcache_step_updates_the_parameters_like_the_full_batch_step(kind, world_pairs, world_judged):
    # judged: every slot GradCache chunks (queries, positives, hard negatives, ranking candidates), both directions
    loss = LossConfig(rpa="pairwise", kl_weight=0.3, hard_negatives=True, rpa_list_size=3) if kind == "judged" \
        else LossConfig()
    full_model, full_loss = _setup(loss)
    chunked_model, chunked_loss = copy.deepcopy(full_model), copy.deepcopy(full_loss)
    rows = numpy_rows((world_judged if kind == "judged" else world_pairs).slice(0, 10))
    collate = (lambda m: collate_judged(m, rows, loss)) if kind == "judged" else (lambda m: collate_pairs(m, rows, 0, 0))
    full = train_step(full_model, full_loss, collate(full_model), _sgd(full_model, full_loss))
    chunked = train_step(chunked_model, chunked_loss, collate(chunked_model), _sgd(chunked_model, chunked_loss),
                         gradcache_chunk=3)
    assert chunked["loss"] == pytest.approx(full["loss"], rel=1e-5)
    moved = 0.0
    before = dict(_setup(loss)[0].named_parameters())
    for (name, a), (_, b) in zip(full_model.named_parameters(), chunked_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        moved = max(moved, float((a - before[name]).detach().abs().max()))
    assert moved > 1e-3  # the step did change the weights


def test_trainable_text_leaves_the_image_tower_unchanged(world_pairs):
    model, loss_fn = _setup(LossConfig())
    select_trainable(model, "text")
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    batch = collate_pairs(model, numpy_rows(world_pairs.slice(0, 8)), epoch=0, seed=0)
    train_step(model, loss_fn, batch, _sgd(model, loss_fn))
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("text_model.", "text_projection.")) for n in changed)
