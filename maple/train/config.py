from dataclasses import dataclass
from typing import Literal

from maple.losses.config import LossConfig
from maple.section import Section


class TrainConfig(Section):
    input: str | None = None  # mined Parquet (or pairs for InfoNCE only); None: from run.output_dir
    output: str | None = None
    num_workers: int = 2  # 0: Ray Train's local mode, the loop runs in this process (small runs, no restarts)
    use_gpu: bool = False
    zero_stage: int = 2
    bf16: bool | None = None  # None: bf16 when training on GPUs (use_gpu), float32 on CPU
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    steps: int = 200
    batch_size: int = 64  # global contrastive batch
    gradcache_chunk: int | None = None  # None: no GradCache
    lora: bool = False
    lora_rank: int = 8
    lora_dora: bool = False
    trainable: Literal["all", "text", "image", "projections"] = "all"
    checkpoint_every: int = 50
    eval_every: int = 50
    max_failures: int = 2
    loss: LossConfig = LossConfig()
    # --- added with the training job (issue 5) ---
    val_input: str | None = None  # pairs for periodic val recall; None: <run.output_dir>/world/val when it exists
    storage_path: str | None = None  # Ray Train storage (checkpoints); None: <run.output_dir>/ray_results
    num_to_keep: int = 2  # checkpoints kept in storage
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    lora_alpha: float = 16.0
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer; 0 = stream order
    register_name: str | None = None  # MLflow registered model name; None: <run.name>-embedder
    # Where the workers run (Ray Train's ScalingConfig): only on nodes with this GPU (`accelerator_type:<name>` on
    # the node, docs/cluster.md), and how they spread over nodes (STRICT_SPREAD: one worker per node)
    accelerator_type: str | None = None
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


@dataclass(frozen=True)
class MlflowTarget:
    """Where the training loop logs: an MLflow run that the caller opened (`maple.tracking.training_run`; the loop
    never opens one of its own). Here, not in the loop's module, so that tracking needs no torch to name it."""

    tracking_uri: str
    experiment: str
    run_id: str
