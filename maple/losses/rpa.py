"""Relative Preference Alignment (RPA): MAPLE's DPO for embeddings (arXiv 2506.06970).

An MLLM judge scores every candidate of a query (α = P(Yes)); RPA pushes the embedder's similarities to agree with
the judge's ranking. The reference policy is uniform, so DPO's log-ratio reduces to the policy score, which MAPLE
replaces by the scaled similarity s_j = β·sim(q, c_j). Ranking candidates by α (r_0 best):

    pairwise  L = −(1/N) Σ_i Σ_{k<l} (α_{i,r_k} − α_{i,r_l}) · log σ(s_{i,r_k} − s_{i,r_l})
    listwise  L = −(1/N) Σ_i Σ_k w_ik · log( exp(s_{i,r_k}) / Σ_{j≥k} exp(s_{i,r_j}) )

| input        | shape     | meaning                                                           |
|--------------|-----------|-------------------------------------------------------------------|
| sim          | (N, K)    | cosine similarity of each query to its K candidates (c+ and hard negatives) |
| judge_scores | (N, K)    | the judge's α for the same candidates (no gradient needed)         |
| mask         | (N, K)    | optional bool: True where the judge gave a score; others are excluded, never invented |

N in the 1/N is the number of queries (rows), whether or not a row has a valid pair. Related: `infonce_loss` (the
other half of MAPLE's λ·RPA + (1−λ)·InfoNCE), `soft_label_kl_loss` (UniME-V2's use of the same scores).

    loss = rpa_pairwise_loss(sim, judge_scores, beta=10.0, mask=judge_scores.isfinite())
"""

import torch
import torch.nn.functional as F


def _valid(sim: torch.Tensor, judge_scores: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    if sim.ndim != 2 or judge_scores.shape != sim.shape:
        raise ValueError(
            f"{name}: sim and judge_scores must both be (N, K); got {tuple(sim.shape)} and {tuple(judge_scores.shape)}"
        )
    if mask is None:
        return torch.ones_like(sim, dtype=torch.bool)
    if mask.shape != sim.shape or mask.dtype != torch.bool:
        raise ValueError(f"{name}: mask must be a bool (N, K) tensor like sim; got {mask.dtype} {tuple(mask.shape)}")
    return mask


def rpa_pairwise_loss(
    sim: torch.Tensor, judge_scores: torch.Tensor, beta: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pairwise RPA (MAPLE), a scalar.

    Every ordered pair (a, b) of valid candidates with α_a > α_b contributes (α_a − α_b)·log σ(β·sim_a − β·sim_b).
    This is the sum over k<l of the sorted ranking: tied pairs have weight 0 there, so the loss does not depend on
    how ties are ordered and needs no sort.
    """
    valid = _valid(sim, judge_scores, mask, "rpa_pairwise_loss")
    # where(), not multiplication: masked entries may be NaN (missing judge scores) and must not reach the sum
    alpha = torch.where(valid, judge_scores, 0.0)
    s = torch.where(valid, beta * sim, 0.0)
    pair_valid = valid[:, :, None] & valid[:, None, :]  # [i, a, b]
    weight = torch.where(pair_valid, (alpha[:, :, None] - alpha[:, None, :]).clamp(min=0), 0.0)
    log_sigma = F.logsigmoid(s[:, :, None] - s[:, None, :])
    return -(weight * log_sigma).sum() / sim.shape[0]


def rpa_listwise_loss(
    sim: torch.Tensor, judge_scores: torch.Tensor, beta: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Listwise RPA (MAPLE; a weighted Plackett–Luce likelihood of the judge's ranking), a scalar.

    For row i with m_i valid candidates, r = the valid candidates sorted by α descending; ties keep column order
    (a stable sort), so with the positive in column 0 a tie is resolved in its favour. For positions k < m_i − 1:
        w_ik = (1 / (m_i − 1 − k)) · Σ_{j>k} (α_{i,r_k} − α_{i,r_j})      (mean α-gap to the candidates after r_k, ≥ 0)
        term = w_ik · log( exp(s_{i,r_k}) / Σ_{j≥k} exp(s_{i,r_j}) ),   s = β·sim
    The last position (k = m_i − 1) has no successor and is excluded (its log-term is log 1 = 0 anyway).
    L = −(1/N) Σ_i Σ_k term.
    """
    valid = _valid(sim, judge_scores, mask, "rpa_listwise_loss")
    num_candidates = sim.shape[1]
    # invalid candidates sort last; within equal α the stable sort keeps column order
    key = judge_scores.masked_fill(~valid, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    v = valid.gather(1, order)
    alpha = torch.where(v, judge_scores.gather(1, order), 0.0)
    s = torch.where(v, (beta * sim).gather(1, order), 0.0)

    ones = torch.ones(num_candidates, num_candidates, dtype=torch.bool, device=sim.device)
    after = torch.triu(ones, diagonal=1)[None] & v[:, None, :]  # [i, k, j]: valid r_j strictly after r_k
    n_after = after.sum(-1)
    gap_sum = torch.where(after, alpha[:, :, None] - alpha[:, None, :], 0.0).sum(-1)
    weight = torch.where(v & (n_after > 0), gap_sum / n_after.clamp(min=1), 0.0)

    # the denominator of position k runs over valid r_j, j ≥ k; the diagonal is always kept so no row is all −inf
    suffix = torch.triu(ones, diagonal=0)[None] & (
        v[:, None, :] | torch.eye(num_candidates, dtype=torch.bool, device=sim.device)
    )
    log_denominator = torch.logsumexp(
        s[:, None, :].expand(-1, num_candidates, -1).masked_fill(~suffix, float("-inf")), dim=-1
    )
    return -(weight * (s - log_denominator)).sum() / sim.shape[0]
