"""MAPLE's training objective, built from `LossConfig` (ARCHITECTURE.md "Losses"):

    total = L_InfoNCE + λ·L_RPA + γ·L_KL                 (loss.combine = additive, the default)
    total = λ·L_RPA + (1−λ)·L_InfoNCE + γ·L_KL          (loss.combine = convex: MAPLE, arXiv 2506.06970)

Which term reads which data:

- InfoNCE (CLIP, MAPLE): the global batch, one softmax per direction (`groups`), plus each query's hard negatives
  (loss.hard_negatives); no judge scores.
- KL (UniME-V2): {c+, the mined hard negatives} (false-negative filter, cyclical sampling) and their judge scores.
- RPA (MAPLE): the preference ranking of the query's judged candidates (loss.rpa_candidates = ranking: retrieved and
  rewritten, the paired one at the judge's place), or {c+, hard negatives} (= mined); ordered by their judge scores.

L_InfoNCE: `infonce_loss`; L_RPA: `rpa_pairwise_loss` / `rpa_listwise_loss` with β = loss.rpa_beta; L_KL:
`soft_label_kl_loss` (UniME-V2, arXiv 2510.13515) with τ = loss.kl_temperature (the judge's side:
loss.kl_judge_temperature). RPA and KL are per-query terms on this rank's rows (their mean across ranks is the global
mean).

| forward input        | shape     | source (JUDGED_SCHEMA column)                                    |
|----------------------|-----------|------------------------------------------------------------------|
| query                | (N, D)    | embeddings of query_text / query_image                           |
| positive             | (N, D)    | embeddings of positive_text / positive_image                     |
| hard_negatives       | (N, k, D) | embeddings of hard_negative_texts / hard_negative_images         |
| positive_score       | (N,)      | positive_score                                                   |
| hard_negative_scores | (N, k)    | hard_negative_scores                                             |
| score_mask           | (N, 1+k)  | optional bool, column 0 = c+; default: the scores that are finite (null → NaN) |
| ranking              | (N, P, D) | embeddings of ranking_texts / ranking_images (P drawn per query) |
| ranking_scores       | (N, P)    | ranking_scores of the same candidates, NaN where padded           |
| groups, query_keys, positive_keys | (N,) long | direction, content keys of query and positive (`infonce_loss`) |

The module owns the temperature: `log_logit_scale` = log(1/τ), initialised from loss.temperature, log-parameterised
like CLIP; a trainable parameter when loss.learnable_temperature and InfoNCE is on, otherwise a buffer. Put the
module's parameters in the optimizer.

    loss_fn = MapleLoss(config.train.loss)
    out = loss_fn(q, p, hard_negatives=h, positive_score=ps, hard_negative_scores=hs, ranking=r, ranking_scores=rs)
    out["loss"].backward()
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maple.losses.config import LossConfig
from maple.losses.infonce import MAX_LOGIT_SCALE, infonce_loss
from maple.losses.rpa import rpa_listwise_loss, rpa_pairwise_loss
from maple.losses.soft_label import soft_label_kl_loss

_JUDGED_COLUMNS = "positive_score, hard_negative_scores"


class MapleLoss(nn.Module):
    def __init__(self, config: LossConfig, *, local_loss: bool = False, gather: bool = True):
        """local_loss, gather: passed to `infonce_loss` (how the global batch is formed across ranks)."""
        super().__init__()
        if not config.infonce and config.rpa == "none" and config.kl_weight == 0:
            raise ValueError(
                "train.loss: no loss term is on (infonce=false, rpa=none, kl_weight=0); enable at least one"
            )
        if config.combine == "convex" and config.rpa != "none" and not 0.0 <= config.rpa_weight <= 1.0:
            raise ValueError("train.loss.rpa_weight (λ) must lie in [0, 1] with combine=convex; "
                             f"got {config.rpa_weight}")
        if config.rpa_weight < 0 or config.kl_weight < 0:
            raise ValueError("train.loss.rpa_weight (λ) and train.loss.kl_weight (γ) must be >= 0")
        if config.hard_negative_source == "rewrites" and (config.kl_weight > 0 or (
                config.rpa != "none" and config.rpa_candidates == "mined")):
            raise ValueError("train.loss.hard_negative_source=rewrites (NegCLIP's unjudged negatives) cannot feed the "
                             "judge-scored terms: set kl_weight=0 and rpa_candidates=ranking (or rpa=none)")
        if config.temperature <= 0:
            raise ValueError(f"train.loss.temperature must be > 0; got {config.temperature}")
        self.config = config
        self.local_loss = local_loss
        self.gather = gather
        init = torch.tensor(math.log(1.0 / config.temperature))
        if config.infonce and config.learnable_temperature:
            self.log_logit_scale = nn.Parameter(init)
        else:  # a parameter that never receives a gradient would trip DDP's unused-parameter check
            self.register_buffer("log_logit_scale", init)

    @property
    def needs_scores(self) -> bool:
        return self.config.rpa != "none" or self.config.kl_weight > 0

    @property
    def needs_hard_negatives(self) -> bool:
        cfg = self.config
        return cfg.kl_weight > 0 or (cfg.rpa != "none" and cfg.rpa_candidates == "mined") or (
            cfg.infonce and cfg.hard_negatives)

    @property
    def needs_ranking(self) -> bool:
        return self.config.rpa != "none" and self.config.rpa_candidates == "ranking"

    def logit_scale(self) -> torch.Tensor:
        """1/τ as used by InfoNCE (clamped at 100 like CLIP)."""
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        *,
        hard_negatives: torch.Tensor | None = None,
        positive_score: torch.Tensor | None = None,
        hard_negative_scores: torch.Tensor | None = None,
        score_mask: torch.Tensor | None = None,
        ranking: torch.Tensor | None = None,
        ranking_scores: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
        query_keys: torch.Tensor | None = None,
        positive_keys: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{"loss": total (with graph), "infonce" | "rpa" | "kl": each configured term, "logit_scale"}`; every
        value but "loss" is detached, for logging. Terms that are not configured are absent."""
        cfg = self.config
        if self.needs_hard_negatives and hard_negatives is None:
            wanted = f"kl_weight={cfg.kl_weight}, hard_negatives={cfg.hard_negatives}, rpa={cfg.rpa}"
            raise ValueError(
                f"MapleLoss: train.loss ({wanted}) needs hard negatives, but none were given: train on the mining "
                f"job's judged Parquet (hard_negative_texts / hard_negative_images) or turn those terms off"
            )
        if self.needs_ranking and (ranking is None or ranking_scores is None):
            raise ValueError(
                f"MapleLoss: train.loss.rpa={cfg.rpa} with rpa_candidates=ranking needs each query's preference "
                "ranking (ranking_texts / ranking_images and ranking_scores of the mining job's output); re-run "
                "jobs.mine, or set train.loss.rpa_candidates=mined to rank c+ and the mined hard negatives"
            )
        scale = self.log_logit_scale.exp()
        out: dict[str, torch.Tensor] = {"logit_scale": scale.detach().clamp(max=MAX_LOGIT_SCALE)}
        total = query.new_zeros(())
        convex = cfg.combine == "convex" and cfg.rpa != "none"

        if cfg.infonce:
            infonce = infonce_loss(
                query, positive, scale, hard_negatives=hard_negatives if cfg.hard_negatives else None,
                groups=groups, query_keys=query_keys, candidate_keys=positive_keys,
                local_loss=self.local_loss, gather=self.gather,
            )
            out["infonce"] = infonce.detach()
            total = total + ((1.0 - cfg.rpa_weight) * infonce if convex else infonce)

        if cfg.rpa != "none":
            if cfg.rpa_candidates == "ranking":
                sim, scores, valid = _ranking_sims(query, ranking, ranking_scores)
            else:
                sim, scores, valid = self._candidate_sims(
                    query, positive, hard_negatives, positive_score, hard_negative_scores, score_mask)
            rpa_fn = rpa_pairwise_loss if cfg.rpa == "pairwise" else rpa_listwise_loss
            rpa = rpa_fn(sim, scores, cfg.rpa_beta, mask=valid)
            out["rpa"] = rpa.detach()
            total = total + cfg.rpa_weight * rpa

        if cfg.kl_weight > 0:
            sim, scores, valid = self._candidate_sims(
                query, positive, hard_negatives, positive_score, hard_negative_scores, score_mask)
            kl = soft_label_kl_loss(sim, scores, cfg.kl_temperature, mask=valid,
                                    judge_temperature=cfg.kl_judge_temperature)
            out["kl"] = kl.detach()
            total = total + cfg.kl_weight * kl

        out["loss"] = total
        return out

    def _candidate_sims(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        hard_negatives: torch.Tensor,
        positive_score: torch.Tensor | None,
        hard_negative_scores: torch.Tensor | None,
        score_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sim, judge scores and validity over {c+, hard negatives}: each (N, 1+k)."""
        missing = [
            name
            for name, t in (("positive_score", positive_score), ("hard_negative_scores", hard_negative_scores))
            if t is None
        ]
        if missing:
            raise ValueError(
                f"MapleLoss: train.loss.rpa={self.config.rpa} / train.loss.kl_weight={self.config.kl_weight} need "
                f"judge scores, but {', '.join(missing)} is missing: train on the mining job's judged Parquet (columns "
                f"{_JUDGED_COLUMNS}) or set train.loss.rpa=none and train.loss.kl_weight=0"
            )
        n, k = hard_negatives.shape[:2]
        if positive_score.shape != (n,) or hard_negative_scores.shape != (n, k):
            raise ValueError(
                f"MapleLoss: positive_score must be (N,) = ({n},) and hard_negative_scores (N, k) = ({n}, {k}); got "
                f"{tuple(positive_score.shape)} and {tuple(hard_negative_scores.shape)}"
            )
        scores = torch.cat([positive_score[:, None], hard_negative_scores], dim=1).to(query.dtype)
        if score_mask is None:
            valid = scores.isfinite()
        else:
            if score_mask.shape != scores.shape:
                raise ValueError(
                    f"MapleLoss: score_mask must be (N, 1+k) = {tuple(scores.shape)}; got {tuple(score_mask.shape)}"
                )
            valid = score_mask.bool()
            if (valid & ~scores.isfinite()).any():
                raise ValueError("MapleLoss: score_mask marks a judge score as valid that is NaN or infinite")
        z_q = nn.functional.normalize(query, dim=-1)
        z_c = nn.functional.normalize(torch.cat([positive[:, None], hard_negatives], dim=1), dim=-1)
        sim = torch.einsum("nd,nkd->nk", z_q, z_c)
        return sim, scores, valid


def _ranking_sims(query: torch.Tensor, ranking: torch.Tensor, ranking_scores: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sim (N, P), judge scores (N, P) and validity (finite scores) over each query's drawn ranking candidates."""
    if ranking.ndim != 3 or ranking.shape[0] != query.shape[0] or ranking_scores.shape != ranking.shape[:2]:
        raise ValueError(f"MapleLoss: ranking must be (N, P, D) with N = {query.shape[0]} and ranking_scores (N, P); "
                         f"got {tuple(ranking.shape)} and {tuple(ranking_scores.shape)}")
    scores = ranking_scores.to(query.dtype)
    z_q = nn.functional.normalize(query, dim=-1)
    sim = torch.einsum("nd,npd->np", z_q, nn.functional.normalize(ranking, dim=-1))
    return sim, scores, scores.isfinite()
