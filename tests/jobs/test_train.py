"""jobs.train: bad configs fail at start (before Ray), and the job runs through `ray job submit` against a local
`ray start --head` (ZeRO-2, 2 workers), training the tiny CLIP twin on the synthetic world."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from jobs import train

REPO = Path(__file__).resolve().parents[2]


def _bad(capsys, *overrides: str, world=None) -> str:
    argv = list(overrides)
    if world is not None:
        argv += [f"train.input={world / 'train'}", f"train.val_input={world / 'val'}"]
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_unknown_loss_fails_at_start(capsys):
    assert "train.loss.rpa" in _bad(capsys, "train.loss.rpa=triplet")


def test_zero_stage_4_fails_at_start(capsys, small_world):
    assert "train.zero_stage=4" in _bad(capsys, "train.zero_stage=4", world=small_world[0])


@pytest.mark.parametrize("candidates, column", [("ranking", "ranking_scores"), ("mined", "positive_score")])
def test_rpa_on_pairs_without_judged_columns_fails_at_start(capsys, small_world, candidates, column):
    err = _bad(capsys, "train.loss.rpa=pairwise", f"train.loss.rpa_candidates={candidates}", world=small_world[0])
    assert column in err and "train.loss.rpa=pairwise" in err


def test_ray_job_submit_trains_exports_and_registers(ray_head, small_world, mlflow_uri, tmp_path):
    world = small_world[0]
    env = {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": mlflow_uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # PYTHONPATH (runtime env) finds jobs/ and maple/; every path below is absolute
    entrypoint = [sys.executable, "-m", "jobs.train", "run.name=submitted", f"run.output_dir={tmp_path}",
                  f"train.input={world / 'train'}", f"train.val_input={world / 'val'}", "train.zero_stage=2",
                  "train.num_workers=2", "train.steps=6", "train.batch_size=16", "train.checkpoint_every=3",
                  "train.eval_every=6", "train.lr=2e-3", "train.warmup_steps=0",
                  "train.register_name=submitted-embedder"]
    done = ray_head.submit(entrypoint, f"--runtime-env-json={json.dumps({'env_vars': env})}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = done.stdout + done.stderr  # the job's own output, as `ray job submit` tails it
    start = logs.rindex('{"model_dir"')
    summary = json.loads(logs[start:logs.index("\n", start)])
    assert (Path(summary["model_dir"]) / "maple_embedder.json").exists()
    assert summary["registry_uri"].startswith("models:/submitted-embedder/")
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    loss = {m.step: m.value for m in client.get_metric_history(summary["mlflow_run_id"], "loss")}
    recall = {m.step: m.value for m in client.get_metric_history(summary["mlflow_run_id"], "val_mean_r_at_1")}
    assert loss[6] < loss[1]
    assert recall[6] > recall[0]


@pytest.mark.parametrize("workers, asked", [(0, "1 GPU "), (2, "2 GPUs")])
def test_use_gpu_on_a_cluster_without_gpus_fails_in_one_sentence(workers, asked):
    from jobs.common import check_training_gpus
    from maple.section import SetupError
    from maple.train.config import TrainConfig

    with pytest.raises(SetupError, match=rf"^train.use_gpu=true asks for {asked}.*but the Ray cluster has 0; set "
                                         r"train.use_gpu=false to train on CPU, or join a cluster with GPUs"):
        check_training_gpus(TrainConfig(use_gpu=True, num_workers=workers), gpus=0)
    check_training_gpus(TrainConfig(use_gpu=False, num_workers=workers), gpus=0)


def test_an_accelerator_type_no_node_has_fails_in_one_sentence(ray_local):
    """Without an autoscaler (none runs for the tests' local Ray), work pinned to a GPU type that no node has would
    wait forever: the training and mining jobs refuse it first (judge.accelerator_type goes through the same check)."""
    from maple.section import SetupError
    from maple.stages.capacity import check_accelerator

    here = {"CPU": 4.0, "accelerator_type:A10G": 1.0}
    with pytest.raises(SetupError, match=r"^train.accelerator_type=H100: no node of this Ray cluster has that GPU "
                                         r"\(it has A10G\); set train.accelerator_type to one of those, or leave it"):
        check_accelerator("H100", "train.accelerator_type", here)
    with pytest.raises(SetupError, match=r"\(it has no accelerator type\)"):
        check_accelerator("A100", "judge.accelerator_type", {"CPU": 4.0})
    check_accelerator("A10G", "train.accelerator_type", here)
    check_accelerator(None, "train.accelerator_type", {"CPU": 4.0})
