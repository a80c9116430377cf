from typing import Literal

from maple.section import Section


class RerankerConfig(Section):
    kind: Literal["generative", "cross_encoder"] = "cross_encoder"
    name_or_path: str | None = None
    listwise_size: int = 4  # x: negatives beside the positive in the listwise loss
    listwise_weight: float = 1.0
    lr: float = 1e-3
    steps: int = 100
    batch_size: int = 16
