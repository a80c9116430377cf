"""Train an embedder under Ray Train + DeepSpeed: InfoNCE, MAPLE's RPA and UniME-V2's soft labels.

`python -m jobs.train --config configs/train.yaml train.loss.rpa=listwise ...`, or on a cluster
`ray job submit --address http://HEAD:8265 -- python -m jobs.train --config configs/train.yaml ...`.

Input (train.input): the mining job's judged Parquet, or plain pairs for the InfoNCE baseline; by default
<mine.output>/judged (mine.output: <run.output_dir>/mined) when it exists, else <run.output_dir>/world/train. Val
recall is computed on train.val_input (default <run.output_dir>/world/val). Re-running with the same run.name
resumes from the last checkpoint and logs to the same MLflow run. Prints the exported model directory and its MLflow
registry URI as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.dataset as pads

from jobs.common import train
from maple.config import Config
from maple.recipes.embedder import EmbedderTask
from maple.runtime import init_ray, parse_config
from maple.train.loop import check_config


def input_paths(cfg: Config) -> dict[str, str]:
    """{"train": path, "val": path (when there is one)} from the config and the run's folder conventions."""
    out = Path(cfg.run.output_dir)
    judged = Path(cfg.mine.output or out / "mined") / "judged"  # where the mining job writes its rows
    train = cfg.train.input or str(judged if judged.exists() else out / "world" / "train")
    paths = {"train": train}
    val = cfg.train.val_input or (str(out / "world" / "val") if (out / "world" / "val").exists() else None)
    if val:
        paths["val"] = val
    return paths


def preflight(cfg: Config, paths: dict[str, str]) -> None:
    """Every check that can fail, before Ray starts: the config, the inputs' existence and their columns."""
    check_config(cfg.train)
    schemas = {}
    for name, path in paths.items():
        if "://" not in path and not Path(path).exists():
            raise ValueError(f"train input {name!r}: {path} does not exist (set train.input / train.val_input, or run "
                             f"jobs.synth / jobs.mine first)")
        schemas[name] = pads.dataset(path, format="parquet").schema
    task(cfg).check(schemas)


def task(cfg: Config) -> EmbedderTask:
    return EmbedderTask(cfg.model, cfg.train, cfg.eval, seed=cfg.run.seed)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    paths = input_paths(cfg)
    try:
        preflight(cfg, paths)
    except ValueError as exc:  # exit code 2 like parse_config's config errors
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    init_ray(cfg.run)
    import ray.data

    datasets = {name: ray.data.read_parquet(path) for name, path in paths.items()}
    result = train(cfg, task(cfg), datasets, run_name=f"{cfg.run.name}-train")
    summary = {"model_dir": result.model_dir, "registry_uri": result.registry_uri,
               "mlflow_run_id": result.mlflow_run_id,
               "val_mean_r@1": result.metrics.get("val_mean_r_at_1"), "loss": result.metrics.get("loss")}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
