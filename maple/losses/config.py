from typing import Literal

from maple.section import Section


class LossConfig(Section):
    """λ·RPA + (1−λ)·InfoNCE + γ·KL (ARCHITECTURE.md "Losses"); `maple.losses.MapleLoss` reads it."""

    infonce: bool = True
    hard_negatives: bool = False  # MAPLE's extended negatives: mined hard negatives in the InfoNCE denominator
    rpa: Literal["none", "pairwise", "listwise"] = "none"
    rpa_weight: float = 0.5  # λ
    rpa_beta: float = 10.0  # β in s_j = β·sim(q, c_j)
    kl_weight: float = 0.0  # γ
    kl_temperature: float = 0.02
    temperature: float = 0.05  # initial τ of InfoNCE
    learnable_temperature: bool = True
