"""Soft-label distribution alignment: UniME-V2 (arXiv 2510.13515), the judge's scores as a soft target.

Over each query's candidates {c+, c_1..c_k}: P = softmax(sim/τ) from the embedder, Q = softmax(s/τ_Q) from the
judge's scores, and L = ½ [KL(P‖Q) + KL(Q‖P)] (a symmetric KL, the Jeffreys divergence), averaged over the batch.
UniME-V2 uses one τ (0.02) for both; `judge_temperature` sets τ_Q apart (a judge whose scores are coarse gives
near one-hot targets at τ = 0.02).

| input        | shape  | meaning                                                                  |
|--------------|--------|--------------------------------------------------------------------------|
| sim          | (N, K) | cosine similarity of each query to its K candidates                      |
| judge_scores | (N, K) | the judge's P(Yes) for the same candidates                               |
| mask         | (N, K) | optional bool: True where the judge gave a score; softmaxes over valid ones only |

A row with no valid candidate contributes 0 (and still counts in the batch mean). Related: `rpa_pairwise_loss`,
`rpa_listwise_loss` (MAPLE's use of the same scores, as a ranking).

    loss = soft_label_kl_loss(sim, judge_scores, temperature=0.02, mask=judge_scores.isfinite())
"""

import torch


def soft_label_kl_loss(
    sim: torch.Tensor, judge_scores: torch.Tensor, temperature: float = 0.02, mask: torch.Tensor | None = None,
    judge_temperature: float | None = None,
) -> torch.Tensor:
    """½ [KL(P‖Q) + KL(Q‖P)], P = softmax(sim/τ), Q = softmax(judge_scores/τ_Q) over valid candidates (τ_Q =
    `judge_temperature`, default τ); a scalar."""
    if sim.ndim != 2 or judge_scores.shape != sim.shape:
        raise ValueError(
            f"soft_label_kl_loss: sim and judge_scores must both be (N, K); "
            f"got {tuple(sim.shape)} and {tuple(judge_scores.shape)}"
        )
    if mask is None:
        mask = torch.ones_like(sim, dtype=torch.bool)
    elif mask.shape != sim.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"soft_label_kl_loss: mask must be a bool (N, K) tensor like sim; got {mask.dtype} {tuple(mask.shape)}"
        )
    # an all-masked row softmaxes over every column (finite, unused) and is zeroed below, so no NaN appears
    support = mask | ~mask.any(dim=1, keepdim=True)
    log_p = torch.log_softmax((sim / temperature).masked_fill(~support, float("-inf")), dim=1)
    judge_temperature = temperature if judge_temperature is None else judge_temperature
    log_q = torch.log_softmax((judge_scores / judge_temperature).masked_fill(~support, float("-inf")), dim=1)
    # zero the masked logs before any product: −inf·0 would put NaN into the gradient
    log_p = torch.where(mask, log_p, 0.0)
    log_q = torch.where(mask, log_q, 0.0)
    p = torch.where(mask, log_p.exp(), 0.0)
    q = torch.where(mask, log_q.exp(), 0.0)
    # KL(P‖Q) + KL(Q‖P) = Σ (P − Q)(log P − log Q)
    return 0.5 * ((p - q) * (log_p - log_q)).sum() / sim.shape[0]
