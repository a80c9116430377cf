"""The training step of an embedder, as a plain function: no Ray, no torch.distributed required.

`train_step` embeds a collated batch (`maple.train.batch.EmbedderBatch`), computes `MapleLoss`, backpropagates and
steps the optimizer. The same function runs alone (tests, `bench/train_step.py`) and inside the Ray Train worker loop,
where `optimizer` is the DeepSpeed engine and the loss gathers negatives across ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maple.models.embedder import Embedder
from maple.train.batch import EmbedderBatch
from maple.train.gradcache import gradcache_step


def is_engine(optimizer: Any) -> bool:
    """A DeepSpeed engine (it owns backward, clipping and the step) rather than a torch optimizer."""
    return hasattr(optimizer, "backward") and hasattr(optimizer, "step") and not isinstance(optimizer,
                                                                                            torch.optim.Optimizer)


def backward(optimizer: Any, loss: torch.Tensor, is_last: bool = True) -> None:
    """One backward pass; for a DeepSpeed engine, only the last one of a step closes the accumulation boundary
    (GradCache runs several backward passes per step)."""
    if is_engine(optimizer):
        optimizer.set_gradient_accumulation_boundary(is_last)
        optimizer.backward(loss)
    else:
        loss.backward()


def optimizer_step(optimizer: Any, params: list[nn.Parameter] | None = None, max_grad_norm: float = 0.0) -> None:
    """Step and clear the gradients. A DeepSpeed engine clips by its own config (`gradient_clipping`)."""
    if is_engine(optimizer):
        optimizer.step()
        return
    if max_grad_norm > 0 and params:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loss_inputs(batch: EmbedderBatch) -> dict[str, torch.Tensor]:
    """The batch's judge scores, directions and content keys as `MapleLoss` keyword arguments (those it has)."""
    values = {"positive_score": batch.positive_score, "hard_negative_scores": batch.hard_negative_scores,
              "ranking_scores": batch.ranking_scores, "groups": batch.groups, "query_keys": batch.query_keys,
              "positive_keys": batch.positive_keys}
    return {name: value for name, value in values.items() if value is not None}


def train_step(model: Embedder, loss_fn: nn.Module, batch: EmbedderBatch, optimizer: Any,
               gradcache_chunk: int | None = None, max_grad_norm: float = 0.0) -> dict[str, float]:
    """One optimisation step; returns the loss terms (`loss`, `infonce`, `rpa`, `kl`, `logit_scale`) as floats.

    gradcache_chunk: None embeds the whole batch with one graph; n embeds it n rows at a time through GradCache
    (same gradients, the memory of an n-row batch; every embedded tower must then be trainable).
    optimizer: a torch optimizer over the trainable parameters (stepped here, gradients cleared after) or a
    DeepSpeed engine wrapping model and loss_fn.
    """
    model.train()
    n, k, p = len(batch), batch.k, batch.ranking_size
    inputs = {name: t.to(model.device) for name, t in loss_inputs(batch).items()}
    # The slots embedded this step, each with its rows per query (GradCache chunks them by the same queries).
    slots = {"query": (batch.query, 1), "positive": (batch.positive, 1)}
    if batch.hard_negatives is not None:
        slots["hard_negatives"] = (batch.hard_negatives, k)
    if batch.ranking is not None:
        slots["ranking"] = (batch.ranking, p)

    def loss_of(*embedded: torch.Tensor):
        z = dict(zip(slots, embedded))
        extra = {name: z[name].view(n, per_query, -1) for name, (_, per_query) in slots.items()
                 if name in ("hard_negatives", "ranking")}
        return loss_fn(z["query"], z["positive"], **extra, **inputs)

    if gradcache_chunk is None:
        out = loss_of(*(slot.embed(model) for slot, _ in slots.values()))
        backward(optimizer, out["loss"])
    else:
        streams = [(lambda mixed: mixed.embed(model), slot.chunks(gradcache_chunk * max(per_query, 1)))
                   for slot, per_query in slots.values()]
        out = gradcache_step(streams, loss_of, backward=lambda loss, last: backward(optimizer, loss, last))
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer_step(optimizer, params, max_grad_norm)
    return {name: float(value.detach().float().mean()) for name, value in out.items()}
