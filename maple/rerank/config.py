from typing import Literal

from maple.models.config import TinyConfig
from maple.section import Section


class RerankerConfig(Section):
    """The reranker (UniME-V2): its kind, a checkpoint by name or path (None: the tiny random twin), its training."""

    kind: Literal["generative", "cross_encoder"] = "cross_encoder"
    name_or_path: str | None = None  # a maple reranker directory, or a Hugging Face checkpoint (MLLM / CLIP / SigLIP)
    base_family: Literal["clip", "siglip"] = "clip"  # cross_encoder: the dual encoder whose towers it reads
    trust_remote_code: bool = False
    image_size: int = 64
    max_text_tokens: int = 64
    tiny: TinyConfig = TinyConfig()  # sizes of the tiny twin (towers / MLLM)
    cross_layers: int = 2  # cross_encoder: joint self-attention layers over query + candidate tokens
    # cross_encoder: fine-tune the dual encoder's towers too. Off (default): only the cross layers and the head learn,
    # so the similarity residual stays the embedder's own (measured: fine-tuning the towers on the small world's mined
    # rows lowered compositional accuracy, 0.68 -> 0.55 in 90 steps; frozen, it stayed within a row or two).
    train_towers: bool = False
    # training (jobs/train_reranker.py)
    input: str | None = None  # mined (JUDGED_SCHEMA) Parquet folder; None: <mine.output>/judged
    output: str | None = None  # None: <run.output_dir>/models/reranker
    listwise_size: int = 4  # x: negatives beside the positive in the listwise loss
    pairwise_weight: float = 1.0
    listwise_weight: float = 1.0
    lr: float = 1e-3
    steps: int = 100
    batch_size: int = 16  # queries per global step
    val_fraction: float = 0.05  # mined rows held out (by a hash of the row id) for the val pairwise/listwise accuracy
    # retrieve-then-rerank: how many of the embedder's top candidates the "best of" mode picks from (UniME-V2: 5)
    pick_best_of: int = 5
