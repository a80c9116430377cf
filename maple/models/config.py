from typing import Literal

from maple.section import Section


class TinyConfig(Section):
    """Sizes of the tiny randomly initialised twin built when `name_or_path` is None (tests, CPU demo)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 8
    embed_dim: int = 64


class PalConfig(Section):
    """PAL (maple.models.anchor): K anchors per modality over two frozen token encoders (ARCHITECTURE.md)."""

    num_anchors: int = 512  # K (the paper's value)
    tau_pool: float = 0.03  # τ_p, per-anchor softmax pooling over tokens
    tau: float = 0.07  # τ, the fixed InfoNCE temperature
    image_encoder: str | None = None  # a ViT checkpoint by name or path (facebook/dinov2-large); None: tiny random ViT
    image_prefix_tokens: int = 1  # leading non-patch tokens to drop (CLS; + registers for DINOv2-with-registers)
    text_encoder: str | None = None  # a text encoder by path or cached name; None: the bundled all-MiniLM-L6-v2
    anchor_init: Literal["tokens", "normal"] = "tokens"  # tokens: K random cached token features; normal: N(0, 1)
    feature_cache: str | None = None  # frozen token features (Parquet); None: <run.output_dir>/pal/features


class MateConfig(Section):
    """MATE (maple.models.mate): a VLM image encoder joined to an LLM text embedder by a projection P, trained in
    stages (ARCHITECTURE.md; configs/mate.yaml)."""

    vlm: str | None = None  # a CLIP checkpoint or saved maple dual encoder; None: the tiny CLIP twin trained on captions
    vlm_text_tokens: int = 77  # the VLM's text window (CLIP's 77): long texts are truncated there by the baseline
    llm: str | None = None  # the LLM-side text embedder by path or cached name; None: the bundled all-MiniLM-L6-v2
    chunk_overlap: int | None = None  # tokens shared by consecutive windows of a long text; None: window // 8
    projection: Literal["linear", "mlp"] = "mlp"
    projection_hidden: int = 512  # hidden width of the MLP projection
    temperature: float = 0.05  # τ of the contrastive term (fixed)
    distance: Literal["cosine", "mse"] = "cosine"
    distance_weight: float = 1.0
    lora_rank: int = 8  # stage 2: LoRA on the VLM image encoder's attention projections
    lora_alpha: int = 16
    lora_targets: list[str] = ["q_proj", "v_proj"]
    vlm_steps: int = 300  # training of the tiny VLM twin on short captions (when vlm is None): also the baseline
    stage1_caption_steps: int = 150  # stage 1a: P(VLM-text(caption)) -> LLM(caption)
    stage1_document_steps: int = 150  # stage 1b: P(VLM-text(caption)) -> LLM(long caption or document)
    stage2_steps: int = 150  # stage 2: P(VLM-image(x)) -> LLM(caption(x)), LoRA on the image encoder
    stage2_pairs: int | None = 200  # "few image-caption pairs": the first n training images; None: all
    min_caption_tokens: int = 100  # long texts of the synthetic world (maple.data.long_text)
    min_document_tokens: int = 160
    seeds: list[int] = [0, 1, 2]  # the long-text report: every model trained once per seed, mean ± std


class ModelConfig(Section):
    """Which embedder: a family, and a checkpoint by name or path (None: the family's tiny random twin)."""

    family: Literal["clip", "siglip", "qwen2vl", "pal", "mate"] = "clip"
    name_or_path: str | None = None
    image_size: int = 64
    pooling: Literal["last", "mean"] = "last"  # MLLM embedders
    bidirectional: bool = False  # MLLM embedders: MAPLE's bidirectional attention
    trust_remote_code: bool = False
    max_text_tokens: int = 64
    tiny: TinyConfig = TinyConfig()
    pal: PalConfig = PalConfig()
    mate: MateConfig = MateConfig()


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
