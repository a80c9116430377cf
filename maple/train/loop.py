"""The Ray Train + DeepSpeed wrapper around a `TrainTask`: the only part of training that knows about Ray.

`run_training(train, run, task, datasets, run_name, mlflow)` runs a Ray Train V2 `TorchTrainer` whose workers:
- build the task's model and loss, and `deepspeed.initialize` them with a client `torch.optim.AdamW` (ZeRO stage
  train.zero_stage, bf16 from train.bf16; gloo on CPU, NCCL on GPU, set up by Ray Train's TorchConfig);
- stream their shard of the "train" dataset (`get_dataset_shard("train").iter_batches`), collate and step;
- log every step to the MLflow run named by `mlflow` (rank 0, `setup_mlflow`): the loss terms, lr, samples/s,
  memory; and the task's evaluation on the "val" dataset at step 0, every train.eval_every steps and at the end.
  The caller opens that run (`maple.tracking.training_run` keeps one run per run_name across re-submissions);
- save DeepSpeed checkpoints every train.checkpoint_every steps and report them (`ray.train.report`); after a worker
  dies (FailureConfig(max_failures)) or when a run is submitted again under the same name, the workers resume from
  `ray.train.get_checkpoint()`. A checkpoint also holds the data position (epoch, batches of it trained) and each
  rank's torch RNG state; the train split keeps Ray Data's order and the local shuffle is seeded by (run.seed, epoch),
  so a resumed run skips exactly the batches it trained on and ends as the uninterrupted run would (bit-equal on CPU,
  tests/train/test_loop.py);
- at the end gather the weights (ZeRO-3), let the task export them into the final checkpoint, which the driver copies
  to train.output (registering it is the caller's: `maple.tracking.register_model`).

train.num_workers=0 is Ray Train's local mode: the same loop runs in the calling process (a gloo group of one for
DeepSpeed; no worker actor to start, no restarts). The CPU demo trains its twenty small runs this way.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maple.data.files import atomic_path, check_replaceable
from maple.section import RunConfig
from maple.train.config import MlflowTarget, TrainConfig
from maple.train.task import TrainTask

# Each ray.train.report waits for the controller's next poll (2 s by default in Ray Train V2).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

log = logging.getLogger(__name__)
DEEPSPEED_TAG = "deepspeed"
MODEL_DIR = "model"


@dataclass
class TrainResult:
    model_dir: str  # the exported model (train.output)
    mlflow_run_id: str
    registry_uri: str | None = None  # models:/<name>/<version>, once the caller registers it
    metrics: dict[str, float] = field(default_factory=dict)  # the last reported metrics
    checkpoint_path: str | None = None


# --- checks before anything starts ---------------------------------------------------------------------------------

def check_config(tc: TrainConfig) -> None:
    """Refuse configs that cannot run, before any worker starts; messages name the key and what to do."""
    if tc.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage={tc.zero_stage}: DeepSpeed ZeRO has stages 0, 1, 2 and 3")
    if tc.num_workers < 0:
        raise ValueError(f"train.num_workers={tc.num_workers}: 0 (Ray Train's local mode) or more workers")
    if tc.num_workers and tc.batch_size % tc.num_workers:
        raise ValueError(f"train.batch_size={tc.batch_size} (global) must be a multiple of train.num_workers="
                         f"{tc.num_workers}")
    if tc.gradcache_chunk is not None and tc.zero_stage == 3:
        # Measured with deepspeed 0.19.8: ZeRO-3 keeps only the last of several backward passes in one step.
        raise ValueError("train.gradcache_chunk is not supported with train.zero_stage=3 (ZeRO-3 does not accumulate "
                         "the several backward passes of a GradCache step); use zero_stage <= 2 or no GradCache")
    if tc.steps < 1 or tc.checkpoint_every < 1 or tc.eval_every < 1:
        raise ValueError("train.steps, train.checkpoint_every and train.eval_every must be >= 1")


def deepspeed_config(tc: TrainConfig, micro_batch: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": tc.max_grad_norm,  # DeepSpeed's default is 1.0: always say it
        "zero_optimization": {"stage": tc.zero_stage},
        "bf16": {"enabled": tc.use_gpu if tc.bf16 is None else tc.bf16},
        "zero_allow_untested_optimizer": True,  # the client AdamW: no DeepSpeed op to compile
        "steps_per_print": 10 ** 9,
    }


# --- pieces of the worker loop (plain functions; DeepSpeed quirks documented where they are handled) ---------------

class TrainModule(nn.Module):
    """Model and loss in one module, so DeepSpeed partitions and checkpoints the loss's temperature too."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn


def lift_scalar_parameters(module: nn.Module) -> list[str]:
    """Give 0-dim parameters shape (1,): DeepSpeed 0.19's model broadcast views each parameter as bytes, which a
    0-dim tensor cannot do (CLIP's logit_scale, MapleLoss's log_logit_scale). Returns the names, to undo on export."""
    names = []
    for name, param in module.named_parameters():
        if param.ndim == 0:
            param.data = param.data.reshape(1)
            names.append(name)
    return names


def register_zero3_external_parameters(module: nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters when its forward starts. transformers' text embeddings read a child's
    weight shape before calling the child (CLIPTextEmbeddings: position_embedding.weight.shape[0]), so the embedding
    modules must fetch their children's parameters themselves."""
    import deepspeed

    for sub in module.modules():
        if type(sub).__name__.endswith("Embeddings"):
            for param in sub.parameters():
                deepspeed.zero.register_external_parameter(sub, param)


def warmup_cosine(steps: int, warmup: int):
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def full_state_dict(engine, zero_stage: int, rank: int) -> dict[str, torch.Tensor] | None:
    """The model's full weights on rank 0 (None elsewhere); under ZeRO-3 every rank takes part in the gather."""
    module = engine.module.model
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if rank == 0 else None
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if rank == 0 else None


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG state (dropout masks); DeepSpeed's checkpoint does not hold it."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rng_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"rng_rank{rank}.pt"  # one per rank: every rank draws its own dropout masks


def memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS; Linux reports KiB


def read_all(shard) -> dict[str, Any]:
    """A whole (small) dataset shard as one numpy batch."""
    import numpy as np

    parts = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --- the worker loop -----------------------------------------------------------------------------------------------

def init_single_process_group() -> None:
    """Ray Train's local mode (train.num_workers=0) runs the loop in this process without a process group, and
    DeepSpeed needs one: a gloo group of one on a free loopback port (the local controller destroys it at the end).
    DeepSpeed also asserts that LOCAL_RANK is set, as its launcher and torchrun do."""
    import socket

    import torch.distributed as dist

    os.environ.setdefault("LOCAL_RANK", "0")
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    forget_deepspeed_world_group()  # the cache may hold an earlier, destroyed group of this process


def skip_deepspeed_shared_memory_op() -> None:
    """DeepSpeed's comm backend loads its shared-memory all-reduce op when it starts on CPU; the first start in a
    Python environment JIT-compiles it (~35 s on two cores, then cached under ~/.cache/torch_extensions per
    environment). Only `inference_all_reduce` (DeepSpeed's tensor-parallel inference) uses it; training's all-reduce
    is torch.distributed's (deepspeed 0.19.8, `deepspeed/comm/torch.py`). DeepSpeed reads the op's availability from
    one module-level dict, which it keeps for such edits."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def forget_deepspeed_world_group() -> None:
    """DeepSpeed 0.19 caches its clone of the world group in a module global, which outlives the group. Ray's local
    controller destroys the group after a local-mode run, so it is forgotten after each run and whenever the loop
    makes a new group: whoever initialises DeepSpeed next in this process (another run, a test) would otherwise get a
    dead group from the cache."""
    import deepspeed.utils.groups

    deepspeed.utils.groups._WORLD_GROUP = None


@contextmanager
def checkpoint_directory(tc: TrainConfig, run: RunConfig, run_name: str) -> Iterator[str]:
    """Where a checkpoint is written before `ray.train.report`. Workers report a temporary folder that Ray copies to
    storage; local mode keeps the reported folder itself as the result's checkpoint, so it must outlive the report:
    <storage, or run.output_dir when storage is remote>/<run_name>/checkpoint, replaced by each report."""
    if tc.num_workers:
        with tempfile.TemporaryDirectory() as directory:
            yield directory
        return
    storage = storage_path(tc, run)
    directory = Path(storage if "://" not in storage else run.output_dir) / run_name / "checkpoint"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    yield str(directory)


def _worker_loop(config: dict[str, Any]) -> None:
    import deepspeed
    import mlflow as mlflow_module
    import ray.train
    from ray.air.integrations.mlflow import setup_mlflow
    from ray.train import Checkpoint

    tc, run = TrainConfig.model_validate(config["train"]), RunConfig.model_validate(config["run"])
    target: MlflowTarget = config["mlflow"]
    task: TrainTask = config["task"]
    if tc.num_workers == 0:
        init_single_process_group()
    skip_deepspeed_shared_memory_op()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    micro_batch = tc.batch_size // world
    seed = run.seed

    model, loss_fn = task.build(seed)
    module = TrainModule(model, loss_fn)
    lifted = lift_scalar_parameters(module)
    if tc.zero_stage == 3:
        register_zero3_external_parameters(module)
    optimizer = torch.optim.AdamW(task.trainable_parameters(model, loss_fn), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.steps, tc.warmup_steps))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(tc, micro_batch))

    # The data position: the step, the epoch and how many of its batches this run has trained on.
    state = {"step": 0, "epoch": 0, "batch": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            _, client_state = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
            if any(key not in client_state for key in state) or not rng_file(directory, rank).is_file():
                raise RuntimeError(f"checkpoint {checkpoint.path} holds no data position or RNG state (written by an "
                                   "older maple): resuming from it would replay data; start the run afresh")
            state = {key: client_state[key] for key in state}
            set_rng_state(torch.load(rng_file(directory, rank)))
        log.info("rank %d resumed from step %d (epoch %d, batch %d)", rank, state["step"], state["epoch"],
                 state["batch"])

    if rank == 0:
        mlflow_module.set_tracking_uri(target.tracking_uri)
        mlflow_module.set_experiment(target.experiment)
        # the caller's run: setup_mlflow adopts it. In local mode this is the driver, maybe inside a parent run
        mlflow_module.start_run(run_id=target.run_id, nested=mlflow_module.active_run() is not None)
    mlflow = setup_mlflow(tracking_uri=target.tracking_uri, experiment_name=target.experiment,
                          create_experiment_if_not_exists=True, rank_zero_only=True)

    evaluate_here = rank == 0 or tc.zero_stage == 3  # ZeRO-3's forward gathers parameters: every rank takes part
    val_rows = read_all(ray.train.get_dataset_shard("val")) if evaluate_here and "val" in config["datasets"] else None

    def evaluate(step: int) -> dict[str, float]:
        if not val_rows:
            return {}
        with torch.no_grad():
            metrics = task.evaluate(engine.module.model, val_rows)
        if rank == 0:
            mlflow.log_metrics(metrics, step=step)
        return metrics

    def save_and_report(metrics: dict[str, float], final: bool) -> None:
        with checkpoint_directory(tc, run, config["run_name"]) as directory:
            engine.save_checkpoint(directory, tag=DEEPSPEED_TAG, client_state=dict(state))
            torch.save(rng_state(), rng_file(directory, rank))
            weights = full_state_dict(engine, tc.zero_stage, rank) if final else None
            if weights is not None:
                fresh, _ = task.build(seed)
                for name in lifted:  # back to the family's own shapes
                    key = name.removeprefix("model.")
                    if key in weights:
                        weights[key] = weights[key].reshape(())
                fresh.load_state_dict(weights)
                task.export(fresh, Path(directory) / MODEL_DIR)
            ray.train.report({**metrics, "step": state["step"]}, checkpoint=Checkpoint.from_directory(directory))

    metrics: dict[str, float] = {}
    if state["step"] == 0:
        metrics.update(evaluate(0))
    shard = ray.train.get_dataset_shard("train")
    while state["step"] < tc.steps:
        # The epoch's batches come in one order, a function of (seed, epoch): the split keeps Ray Data's order
        # (run_training) and the shuffle is seeded. A resumed run skips the ones it trained on before its checkpoint.
        shuffle_seed = seed + state["epoch"] if tc.shuffle_buffer else None
        epoch_batches = iter(shard.iter_batches(batch_size=micro_batch, batch_format="numpy", drop_last=True,
                                                local_shuffle_buffer_size=tc.shuffle_buffer or None,
                                                local_shuffle_seed=shuffle_seed))
        for _ in islice(epoch_batches, state["batch"]):
            pass
        tick = time.perf_counter()
        for rows in epoch_batches:
            state["batch"] += 1
            batch = task.collate(engine.module.model, rows, state["epoch"])
            step_tick = time.perf_counter()
            terms = task.step(engine.module.model, engine.module.loss_fn, batch, engine)
            step_time = time.perf_counter() - step_tick
            elapsed = time.perf_counter() - tick
            state["step"] += 1
            step = state["step"]
            # samples_per_s: end to end (data, collate, step); step_time_s: the step alone (bench/train_step.py)
            metrics = {**terms, "lr": engine.get_lr()[0], "samples_per_s": micro_batch * world / elapsed,
                       "step_time_s": step_time,
                       "memory_mb": memory_mb(), "epoch": float(state["epoch"])}
            if rank == 0:
                mlflow.log_metrics(metrics, step=step)
            task.after_step(step, rank)
            if step % tc.eval_every == 0 or step == tc.steps:
                metrics.update(evaluate(step))
            if step == tc.steps:
                break
            if step % tc.checkpoint_every == 0:
                save_and_report(metrics, final=False)
            tick = time.perf_counter()
        if state["batch"] == 0:
            raise ValueError(f"the train input yields no batch of {micro_batch} rows per worker (train.batch_size="
                             f"{tc.batch_size} over {world} workers); use a smaller batch or more rows")
        if state["step"] < tc.steps:
            state["epoch"], state["batch"] = state["epoch"] + 1, 0
    save_and_report(metrics, final=True)
    if rank == 0:
        mlflow_module.end_run()


# --- the driver side -----------------------------------------------------------------------------------------------

def storage_path(tc: TrainConfig, run: RunConfig) -> str:
    """train.storage_path (a local folder or a URI such as s3://...), else <run.output_dir>/ray_results."""
    path = tc.storage_path or str(Path(run.output_dir) / "ray_results")
    return path if "://" in path else str(Path(path).resolve())


def output_dir(tc: TrainConfig, run: RunConfig, run_name: str) -> Path:
    """Where the exported model goes: train.output, else <run.output_dir>/models/<run_name>."""
    return Path(tc.output or Path(run.output_dir) / "models" / run_name)


def ordered_ingest_options():
    """Ray Train's ingest options with Ray Data's order kept: the rows each worker's shard streams are then the same
    in every epoch, run and restart (without it, which block reaches which worker first follows task timing), which
    a resumed run needs to skip the batches it trained on. Ray Data documents this for reproducible training."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def run_training(train: TrainConfig, run: RunConfig, task: TrainTask, datasets: dict[str, Any], run_name: str,
                 mlflow: MlflowTarget) -> TrainResult:
    """Train `task` on `datasets` ("train" required, "val" optional: Ray Data datasets) under Ray Train, logging to
    the MLflow run `mlflow`; export the final model to `output_dir(train, run, run_name)`. Re-running with the same
    `run_name` (and storage) resumes where it stopped."""
    import ray.train
    from ray.train.torch import TorchTrainer

    check_config(train)
    check_replaceable(output_dir(train, run, run_name))  # before any work: never replace a folder maple did not write
    if "train" not in datasets:
        raise ValueError(f"run_training needs a 'train' dataset; got {sorted(datasets)}")
    task.check({name: ds.schema().base_schema for name, ds in datasets.items()})
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"train": train.model_dump(mode="json"), "run": run.model_dump(mode="json"), "task": task,
                           "mlflow": mlflow, "datasets": sorted(datasets), "run_name": run_name},
        scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                               accelerator_type=train.accelerator_type,
                                               placement_strategy=train.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path(train, run),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.num_to_keep)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options={"train": ordered_ingest_options()}),
    )
    try:
        result = trainer.fit()
    finally:
        if train.num_workers == 0:
            forget_deepspeed_world_group()
    out = output_dir(train, run, run_name)
    with result.checkpoint.as_directory() as directory, atomic_path(out) as tmp:
        shutil.copytree(Path(directory) / MODEL_DIR, tmp)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    return TrainResult(str(out), mlflow.run_id, None, metrics, result.checkpoint.path)
