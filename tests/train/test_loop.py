"""End to end under Ray Train + DeepSpeed on CPU: 2 workers, ZeRO-3, the tiny CLIP twin on the synthetic world, one
worker killed mid-run and compared with the same run left alone; and Ray Train's local mode (num_workers=0) inside a
parent MLflow run, as the demo uses it. (ZeRO-2 runs end to end in tests/jobs/test_train.py, through `ray job
submit`.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest
import ray.cloudpickle
import torch

from jobs.common import train
from maple.config import load_config
from maple.models.families import load_embedder
from maple.recipes.embedder import EmbedderTask
from maple.tracking import training_run
from maple.train.loop import run_training, storage_path

STEPS, CRASH_AT, CHECKPOINT_EVERY = 6, 4, 2
# The metrics that measure the machine (wall-clock time, peak memory) rather than the training.
MACHINE_METRICS = {"samples_per_s", "step_time_s", "memory_mb"}


class DropoutTask(EmbedderTask):
    """The embedder task with attention dropout on (the tiny twin has none), so training draws from torch's RNG and a
    resumed run matches an uninterrupted one only if the workers' RNG state is restored too."""

    def __init__(self, cfg):
        super().__init__(cfg.model, cfg.train, cfg.eval, seed=cfg.run.seed)

    def build(self, seed: int):
        model, loss_fn = super().build(seed)
        for module in model.modules():
            if type(module).__name__ == "CLIPAttention":
                module.dropout = 0.1
        return model, loss_fn


class CrashOnceTask(DropoutTask):
    """Rank 1's worker process dies (os._exit: no cleanup, like a lost node) right after step CRASH_AT, once: the
    flag file marks that it happened. The last checkpoint before it is step CHECKPOINT_EVERY."""

    def __init__(self, cfg, flag: Path):
        super().__init__(cfg)
        self.flag = flag

    def after_step(self, step: int, rank: int) -> None:
        if rank == 1 and step == CRASH_AT and not self.flag.exists():
            self.flag.write_text("crashed")
            os._exit(1)


# The workers cannot import this test module: Ray ships the class by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def zero3(ray_local, small_world, tmp_path_factory):
    """The config and datasets of both ZeRO-3 runs. The train input is one 64-row shard of the world: 4 batches of 8
    per worker and epoch, so the restarted run skips into epoch 0 and then crosses into epoch 1."""
    import ray.data

    world_dir, _ = small_world
    out = tmp_path_factory.mktemp("train-zero3")
    cfg = load_config(None, [
        f"run.output_dir={out}", "run.name=zero3", f"train.steps={STEPS}", "train.batch_size=16",
        "train.zero_stage=3", "train.num_workers=2", f"train.checkpoint_every={CHECKPOINT_EVERY}",
        f"train.eval_every={STEPS}", "train.lr=2e-3", "train.warmup_steps=0", "train.max_failures=2",
        "train.register_name=zero3-embedder"])
    datasets = {"train": ray.data.read_parquet(str(min((world_dir / "train").glob("*.parquet")))),
                "val": ray.data.read_parquet(str(world_dir / "val"))}
    return cfg, datasets, out


@pytest.fixture(scope="module")
def crashed_run(zero3, mlflow_uri):
    cfg, datasets, out = zero3
    flag = out / "crashed.flag"
    result = train(cfg, CrashOnceTask(cfg, flag), datasets, run_name="zero3-crash")
    return result, flag, mlflow.tracking.MlflowClient(mlflow_uri)


@pytest.fixture(scope="module")
def uninterrupted_run(zero3):
    """The crashed run's twin: same config, seed and data, no crash (and not registered)."""
    cfg, datasets, _ = zero3
    return train(cfg, DropoutTask(cfg), datasets, run_name="zero3-uninterrupted", register_name="")


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_training_loss_falls(crashed_run):
    result, _, client = crashed_run
    loss = dict(_history(client, result.mlflow_run_id, "loss"))
    assert loss[STEPS] < loss[1]


def test_val_recall_beats_the_untrained_model(crashed_run):
    result, _, client = crashed_run
    recall = dict(_history(client, result.mlflow_run_id, "val_mean_r_at_1"))
    assert recall[STEPS] > recall[0]  # step 0 is the untrained model


def test_killed_worker_resumes_from_its_checkpoint_in_the_same_mlflow_run(crashed_run):
    result, flag, client = crashed_run
    assert flag.exists()  # the worker did die
    runs = client.search_runs([client.get_run(result.mlflow_run_id).info.experiment_id],
                              filter_string="attributes.run_name = 'zero3-crash'")
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]
    assert runs[0].info.status == "FINISHED"
    steps = [s for s, _ in _history(client, result.mlflow_run_id, "loss")]
    # steps up to the checkpoint ran once; the steps after it ran again after the restart
    assert steps.count(CHECKPOINT_EVERY) == 1 and steps.count(CHECKPOINT_EVERY + 1) == 2
    assert max(steps) == STEPS


def test_a_killed_run_repeats_its_lost_steps_on_the_same_rows(crashed_run, uninterrupted_run):
    """The steps after the checkpoint ran twice in the killed run (before the kill, and again after the restart from
    the checkpoint); both times their losses equal the uninterrupted run's, bit for bit: the restarted workers skipped
    the rows they had trained on and drew the same dropout masks."""
    result, _, client = crashed_run
    expected = dict(_history(client, uninterrupted_run.mlflow_run_id, "loss"))
    logged = _history(client, result.mlflow_run_id, "loss")
    assert [s for s, _ in logged].count(CHECKPOINT_EVERY + 1) == 2
    assert [v for _, v in logged] == [expected[s] for s, _ in logged]


def test_a_killed_run_ends_with_the_weights_and_metrics_of_an_uninterrupted_run(crashed_run, uninterrupted_run):
    """Bit-equal on CPU: the same rows in the same order on each rank (the data position is in the checkpoint, the
    split keeps Ray Data's order), the same RNG state, and CPU kernels and gloo reductions that are deterministic."""
    result, _, _ = crashed_run
    resumed = load_embedder(result.model_dir).state_dict()
    alone = load_embedder(uninterrupted_run.model_dir).state_dict()
    assert resumed.keys() == alone.keys()
    assert all(torch.equal(resumed[k], alone[k]) for k in alone)
    assert {k: v for k, v in result.metrics.items() if k not in MACHINE_METRICS} == \
        {k: v for k, v in uninterrupted_run.metrics.items() if k not in MACHINE_METRICS}


def test_the_export_loads_and_is_registered(crashed_run, small_world):
    result, _, _ = crashed_run
    model = load_embedder(result.model_dir)
    assert model.encode_texts(["a red circle"]).shape == (1, model.embedding_dim)
    assert result.registry_uri.startswith("models:/zero3-embedder/")
    assert torch.isfinite(model.encode_texts(["a blue square"])).all()


def test_local_mode_trains_in_this_process_as_a_child_of_the_active_run(ray_local, small_world, mlflow_uri, tmp_path):
    import ray.data
    import torch.distributed as dist

    world_dir, _ = small_world
    cfg = load_config(None, [
        f"run.output_dir={tmp_path}", "run.name=local", "train.steps=3", "train.batch_size=16", "train.zero_stage=0",
        "train.num_workers=0", "train.checkpoint_every=2", "train.eval_every=3", "train.warmup_steps=0"])
    datasets = {"train": ray.data.read_parquet(str(world_dir / "train")),
                "val": ray.data.read_parquet(str(world_dir / "val"))}
    with mlflow.start_run(run_name="parent") as parent:
        target = training_run(cfg.run, "train", "local-mode", storage_path(cfg.train, cfg.run))
        task = EmbedderTask(cfg.model, cfg.train, cfg.eval)
        result = run_training(cfg.train, cfg.run, task, datasets, "local-mode", target)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the child run ended, the parent goes on
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    child = client.get_run(result.mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    assert [s for s, _ in _history(client, result.mlflow_run_id, "loss")] == [1, 2, 3]
    assert not dist.is_initialized()  # Ray Train's local controller tore the single-process group down
    assert Path(result.checkpoint_path).is_dir()  # the reported folder outlives the report
    assert load_embedder(result.model_dir).encode_texts(["a red circle"]).shape[0] == 1
