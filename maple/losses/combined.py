"""MAPLE's training objective, built from `LossConfig` (ARCHITECTURE.md "Losses"):

    total = λ·L_RPA + (1−λ)·L_InfoNCE + γ·L_KL          (loss.rpa = pairwise | listwise; MAPLE, arXiv 2506.06970)
    total = L_InfoNCE + γ·L_KL                            (loss.rpa = none: λ is ignored)

L_InfoNCE: `infonce_loss` over the global batch (+ the mined hard negatives when loss.hard_negatives).
L_RPA: `rpa_pairwise_loss` / `rpa_listwise_loss` with β = loss.rpa_beta; L_KL: `soft_label_kl_loss` (UniME-V2,
arXiv 2510.13515) with τ = loss.kl_temperature. Both run over each query's candidates {c+, hard negatives} and their
judge scores, on this rank's rows (per-query terms: their mean across ranks is the global mean).

| forward input        | shape     | source (JUDGED_SCHEMA column)                                    |
|----------------------|-----------|------------------------------------------------------------------|
| query                | (N, D)    | embeddings of query_text / query_image                           |
| positive             | (N, D)    | embeddings of positive_text / positive_image                     |
| hard_negatives       | (N, k, D) | embeddings of hard_negative_texts / hard_negative_images         |
| positive_score       | (N,)      | positive_score                                                   |
| hard_negative_scores | (N, k)    | hard_negative_scores                                             |
| score_mask           | (N, 1+k)  | optional bool, column 0 = c+; default: the scores that are finite (null → NaN) |

The module owns the temperature: `log_logit_scale` = log(1/τ), initialised from loss.temperature, log-parameterised
like CLIP; a trainable parameter when loss.learnable_temperature and InfoNCE is on, otherwise a buffer. Put the
module's parameters in the optimizer.

    loss_fn = MapleLoss(config.train.loss)
    out = loss_fn(q, p, hard_negatives=h, positive_score=ps, hard_negative_scores=hs)
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
        if config.rpa != "none" and not 0.0 <= config.rpa_weight <= 1.0:
            raise ValueError(f"train.loss.rpa_weight (λ) must lie in [0, 1]; got {config.rpa_weight}")
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
        return self.needs_scores or (self.config.infonce and self.config.hard_negatives)

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
    ) -> dict[str, torch.Tensor]:
        """`{"loss": total (with graph), "infonce" | "rpa" | "kl": each configured term, "logit_scale"}`; every
        value but "loss" is detached, for logging. Terms that are not configured are absent."""
        cfg = self.config
        if self.needs_hard_negatives and hard_negatives is None:
            wanted = f"rpa={cfg.rpa}, kl_weight={cfg.kl_weight}, hard_negatives={cfg.hard_negatives}"
            raise ValueError(
                f"MapleLoss: train.loss ({wanted}) needs hard negatives, but none were given: train on the mining "
                f"job's judged Parquet (hard_negative_texts / hard_negative_images) or turn those terms off"
            )
        scale = self.log_logit_scale.exp()
        out: dict[str, torch.Tensor] = {"logit_scale": scale.detach().clamp(max=MAX_LOGIT_SCALE)}
        total = query.new_zeros(())

        if cfg.infonce:
            infonce = infonce_loss(
                query,
                positive,
                scale,
                hard_negatives=hard_negatives if cfg.hard_negatives else None,
                local_loss=self.local_loss,
                gather=self.gather,
            )
            out["infonce"] = infonce.detach()
            total = total + (infonce if cfg.rpa == "none" else (1.0 - cfg.rpa_weight) * infonce)

        if self.needs_scores:
            sim, scores, valid = self._candidate_sims(
                query, positive, hard_negatives, positive_score, hard_negative_scores, score_mask
            )
            if cfg.rpa != "none":
                rpa_fn = rpa_pairwise_loss if cfg.rpa == "pairwise" else rpa_listwise_loss
                rpa = rpa_fn(sim, scores, cfg.rpa_beta, mask=valid)
                out["rpa"] = rpa.detach()
                total = total + cfg.rpa_weight * rpa
            if cfg.kl_weight > 0:
                kl = soft_label_kl_loss(sim, scores, cfg.kl_temperature, mask=valid)
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
