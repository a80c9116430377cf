from typing import Literal

from maple.section import Section


class LossConfig(Section):
    """The training objective (ARCHITECTURE.md "Losses"); `maple.losses.MapleLoss` reads it.

    combine "additive": L_InfoNCE + λ·L_RPA + γ·L_KL (InfoNCE keeps its full weight); "convex": MAPLE's
    λ·L_RPA + (1−λ)·L_InfoNCE + γ·L_KL.
    """

    infonce: bool = True
    hard_negatives: bool = False  # MAPLE's extended negatives: mined hard negatives in the InfoNCE denominator
    # Where InfoNCE's extra negatives come from: "mined" (UniME-V2's judged hard negatives) or "rewrites" (the
    # rewriter's meaning-changing rewrites of the positive caption taken as negatives unjudged: NegCLIP's recipe).
    hard_negative_source: Literal["mined", "rewrites"] = "mined"
    rpa: Literal["none", "pairwise", "listwise"] = "none"
    rpa_weight: float = 0.5  # λ
    rpa_beta: float = 10.0  # β in s_j = β·sim(q, c_j)
    # What RPA ranks: "ranking" = MAPLE's preference ranking over every judged candidate of the query (the paired one
    # at the judge's place; needs the mining job's `ranking_*` columns); "mined" = c+ and the mined hard negatives.
    rpa_candidates: Literal["ranking", "mined"] = "ranking"
    rpa_list_size: int | None = 16  # candidates of a query's ranking drawn per step (the positive always); None: all
    combine: Literal["additive", "convex"] = "additive"
    kl_weight: float = 0.0  # γ
    kl_temperature: float = 0.02  # τ of P = softmax(sim/τ), the embedder's side of the soft-label term
    kl_judge_temperature: float | None = None  # τ of Q = softmax(score/τ), the judge's side; None: kl_temperature
    temperature: float = 0.05  # initial τ of InfoNCE
    learnable_temperature: bool = True
