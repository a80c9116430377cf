"""Symmetric InfoNCE over the global batch, with optional mined hard negatives.

CLIP's contrastive loss (Radford et al. 2021, arXiv 2103.00020), with MAPLE's "extended negatives" (arXiv 2506.06970):
each query's mined hard negatives join its query→candidate denominator.

| input          | shape     | meaning                                              |
|----------------|-----------|------------------------------------------------------|
| query          | (N, D)    | query embeddings (this rank's shard)                 |
| candidate      | (N, D)    | the positive candidate of each query                 |
| hard_negatives | (N, k, D) | optional: each query's mined hard negatives          |
| logit_scale    | ()        | 1/τ, already exponentiated (the caller owns the parameter) |
| groups         | (N,) long | optional: rows of different groups never meet (one InfoNCE per direction) |
| query_keys     | (N,) long | optional: content key of each query; rows sharing one are not each other's negatives |
| candidate_keys | (N,) long | optional: the same for the positive candidates |

Why groups: a batch of the mining job's rows mixes text→image and image→text queries; one softmax over all of them
puts captions in a caption's denominator and images in an image's (the modality gap makes those "negatives" trivial,
and a caption that is also another row's positive is an identical one). With groups each row's softmax runs over its
own direction's rows only: the loss is the row-weighted mean of one InfoNCE per direction. Why keys: two captions of
one image in a batch (or two images described by the same caption) would otherwise be each other's negatives; they
are masked out of each other's denominators (not dropped: every row still counts).

Related: `rpa_pairwise_loss` / `rpa_listwise_loss` (MAPLE, ranked candidates), `soft_label_kl_loss` (UniME-V2), and
`MapleLoss`, which combines them.

    loss = infonce_loss(query_emb, positive_emb, logit_scale, hard_negatives=negative_emb)
"""

import torch
import torch.nn.functional as F

from maple.losses.gather import gather_features, gather_labels

MAX_LOGIT_SCALE = 100.0  # CLIP clamps 1/τ at 100 so the temperature cannot collapse


def infonce_loss(
    query: torch.Tensor,
    candidate: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    hard_negatives: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    query_keys: torch.Tensor | None = None,
    candidate_keys: torch.Tensor | None = None,
    local_loss: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE: L = ½ [CE(q→c) + CE(c→q)], each the batch mean.

    With z L2-normalised and a = min(logit_scale, 100), for query i over the global batch of M pairs:
        q→c:  −log( exp(a·z_qi·z_ci) / (Σ_j exp(a·z_qi·z_cj) + Σ_h exp(a·z_qi·z_hi,h)) )   (h: i's hard negatives)
        c→q:  −log( exp(a·z_ci·z_qi) / Σ_j exp(a·z_ci·z_qj) )
    Inputs are L2-normalised here (idempotent if they already are). Returns a scalar. The sums over j run over the rows
    of i's group (`groups`), leaving out every j ≠ i that shares i's query or candidate key (`query_keys`,
    `candidate_keys`); without them, over every row.

    gather=True: negatives come from every rank (`gather_features`, with gradient). local_loss=False: each rank
    computes the loss over all M rows (the same value on every rank); local_loss=True: only its own N rows against
    all M candidates (open_clip's `local_loss`; cheaper, the ranks' mean is the global loss). Either way, parameter
    gradients averaged across ranks equal the single-process gradient over the whole batch.
    """
    if query.ndim != 2 or candidate.shape != query.shape:
        raise ValueError(
            f"infonce_loss: query and candidate must both be (N, D); "
            f"got {tuple(query.shape)} and {tuple(candidate.shape)}"
        )
    if hard_negatives is not None and (
        hard_negatives.ndim != 3
        or hard_negatives.shape[0] != query.shape[0]
        or hard_negatives.shape[2] != query.shape[1]
    ):
        raise ValueError(
            f"infonce_loss: hard_negatives must be (N, k, D) = ({query.shape[0]}, k, {query.shape[1]}); "
            f"got {tuple(hard_negatives.shape)}"
        )
    z_q = F.normalize(query, dim=-1)
    z_c = F.normalize(candidate, dim=-1)
    z_h = F.normalize(hard_negatives, dim=-1) if hard_negatives is not None else None
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE)

    if gather:
        all_q, offset = gather_features(z_q)
        all_c, _ = gather_features(z_c)
    else:
        all_q, all_c, offset = z_q, z_c, 0
    n_all = all_q.shape[0]

    if local_loss:
        rows_q, rows_c, rows_h = z_q, z_c, z_h
        labels = torch.arange(z_q.shape[0], device=z_q.device) + offset
    else:
        rows_q, rows_c = all_q, all_c
        rows_h = gather_features(z_h)[0] if (z_h is not None and gather) else z_h
        labels = torch.arange(n_all, device=z_q.device)

    logits_qc = scale * rows_q @ all_c.T
    logits_cq = scale * rows_c @ all_q.T
    keep = _kept_pairs(labels, n_all, groups, query_keys, candidate_keys, gather)
    if keep is not None:
        logits_qc = logits_qc.masked_fill(~keep, float("-inf"))
        logits_cq = logits_cq.masked_fill(~keep, float("-inf"))
    if rows_h is not None:
        logits_qc = torch.cat([logits_qc, scale * torch.einsum("nd,nkd->nk", rows_q, rows_h)], dim=1)
    return (F.cross_entropy(logits_qc, labels) + F.cross_entropy(logits_cq, labels)) / 2


def _kept_pairs(rows: torch.Tensor, n_all: int, groups: torch.Tensor | None, query_keys: torch.Tensor | None,
                candidate_keys: torch.Tensor | None, gather: bool) -> torch.Tensor | None:
    """(len(rows), n_all) bool: which global rows j enter the denominators of global row `rows[i]` (its own always
    does); None when every row does. The relation is symmetric, so it serves both directions (q→c and c→q)."""
    if groups is None and query_keys is None and candidate_keys is None:
        return None
    keep = torch.ones(len(rows), n_all, dtype=torch.bool, device=rows.device)
    for labels, kept_when_equal in ((groups, True), (query_keys, False), (candidate_keys, False)):
        if labels is None:
            continue
        labels = (gather_labels(labels) if gather else labels).to(rows.device)
        same = labels[rows][:, None] == labels[None, :]
        keep &= same if kept_when_equal else ~same
    keep[torch.arange(len(rows), device=rows.device), rows] = True
    return keep
