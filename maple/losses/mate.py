"""MATE's per-stage alignment loss: contrastive with in-batch negatives plus a distance term.

MATE ("Meet At The Embedding", arXiv 2407.09541) trains a projection P from a VLM's embedding space into an LLM text
embedder's space, in stages: P(VLM-text(t)) → LLM(t) on captions, then P(VLM-text(query)) → LLM(document), then
P(VLM-image(x)) → LLM(caption(x)). Every stage minimises the same loss between the projected source and the frozen
LLM target (ARCHITECTURE.md, "The two recipes"):

    L = L_InfoNCE(P(s), t)  +  w · L_dist(P(s), t)

| input       | shape  | meaning                                                          |
|-------------|--------|------------------------------------------------------------------|
| projected   | (N, D) | P applied to the VLM embedding of each source (text or image)    |
| target      | (N, D) | the frozen LLM embedding of each source's text (its positive)    |
| logit_scale | ()     | 1/τ of the contrastive term                                      |

The contrastive term is `maple.losses.infonce.infonce_loss` (symmetric, in-batch negatives, all-gathered across
ranks): it orders P(s_i) nearest to its own target among the batch. The distance term pulls each P(s_i) onto its
target itself, so that P's output lands in the LLM's space and is comparable with LLM vectors of texts it never saw
(the paper's projection is trained to *meet* the embedding, not only to rank it):

- "cosine": mean over rows of 1 − cos(P(s_i), t_i);
- "mse": mean over rows and dimensions of (P(s_i) − t_i)², on the raw vectors (t is unit-norm, so P's output is
  pulled to unit norm as well).

Related: `infonce_loss` (the contrastive term alone); `anchor` (PAL, the other post-hoc alignment recipe).

    terms = mate_alignment_loss(projection(vlm_emb), llm_emb, logit_scale, distance="cosine", distance_weight=1.0)
    terms["loss"].backward()
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from maple.losses.infonce import infonce_loss


def alignment_distance(projected: torch.Tensor, target: torch.Tensor, kind: Literal["cosine", "mse"] = "cosine"
                       ) -> torch.Tensor:
    """Scalar distance between rows: mean(1 − cos) ("cosine") or mean squared error over all elements ("mse").

    projected, target: (N, D). Local to the rank (each row is its own pair, no negatives), so no gather is needed.
    """
    if projected.shape != target.shape or projected.ndim != 2:
        raise ValueError(f"alignment_distance: projected and target must both be (N, D); "
                         f"got {tuple(projected.shape)} and {tuple(target.shape)}")
    if kind == "cosine":
        return (1 - F.cosine_similarity(projected, target, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(projected, target)
    raise ValueError(f"alignment_distance: unknown distance {kind!r}; use 'cosine' or 'mse' (model.mate.distance)")


def mate_alignment_loss(projected: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor, *,
                        distance: Literal["cosine", "mse"] = "cosine", distance_weight: float = 1.0,
                        gather: bool = True) -> dict[str, torch.Tensor]:
    """{"loss": L, "infonce": L_InfoNCE, "distance": L_dist} with L = L_InfoNCE + distance_weight · L_dist.

    projected, target: (N, D); the target is the frozen LLM embedding (no gradient flows into it by construction
    of the caller; the loss itself does not detach). gather=False keeps the negatives to this process's batch.
    """
    contrastive = infonce_loss(projected, target, logit_scale, gather=gather)
    dist = alignment_distance(projected, target, distance)
    return {"loss": contrastive + distance_weight * dist, "infonce": contrastive, "distance": dist}


class MateLoss(nn.Module):
    """`mate_alignment_loss` with the stage's settings; the temperature is fixed (MATE trains only P and LoRA)."""

    def __init__(self, temperature: float = 0.05, distance: Literal["cosine", "mse"] = "cosine",
                 distance_weight: float = 1.0, gather: bool = True):
        super().__init__()
        self.register_buffer("logit_scale", torch.tensor(1.0 / temperature))
        self.distance, self.distance_weight, self.gather = distance, distance_weight, gather

    def forward(self, projected: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return mate_alignment_loss(projected, target, self.logit_scale, distance=self.distance,
                                   distance_weight=self.distance_weight, gather=self.gather)
