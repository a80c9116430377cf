"""End to end under Ray Train + DeepSpeed on CPU: 2 workers, ZeRO-3, the tiny CLIP twin on the synthetic world, one
worker killed mid-run; and Ray Train's local mode (num_workers=0) inside a parent MLflow run, as the demo uses it.
(ZeRO-2 runs end to end in tests/jobs/test_train.py, through `ray job submit`.)"""

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


class CrashOnceTask(EmbedderTask):
    """The embedder task, whose rank-1 worker process dies (os._exit: no cleanup, like a lost node) right after
    step CRASH_AT, once: the flag file marks that it happened."""

    def __init__(self, cfg, flag: Path):
        super().__init__(cfg.model, cfg.train, cfg.eval, seed=cfg.run.seed)
        self.flag = flag

    def after_step(self, step: int, rank: int) -> None:
        if rank == 1 and step == CRASH_AT and not self.flag.exists():
            self.flag.write_text("crashed")
            os._exit(1)


# The workers cannot import this test module: Ray ships the class by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def crashed_run(ray_local, small_world, mlflow_uri, tmp_path_factory):
    import ray.data

    world_dir, _ = small_world
    out = tmp_path_factory.mktemp("train-zero3")
    cfg = load_config(None, [
        f"run.output_dir={out}", "run.name=zero3", f"train.steps={STEPS}", "train.batch_size=16",
        "train.zero_stage=3", "train.num_workers=2", f"train.checkpoint_every={CHECKPOINT_EVERY}",
        f"train.eval_every={STEPS}", "train.lr=2e-3", "train.warmup_steps=0", "train.max_failures=2",
        "train.register_name=zero3-embedder"])
    datasets = {"train": ray.data.read_parquet(str(world_dir / "train")),
                "val": ray.data.read_parquet(str(world_dir / "val"))}
    flag = out / "crashed.flag"
    result = train(cfg, CrashOnceTask(cfg, flag), datasets, run_name="zero3-crash")
    return result, flag, mlflow.tracking.MlflowClient(mlflow_uri)


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
