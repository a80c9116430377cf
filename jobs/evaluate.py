"""Evaluate an embedder: recall@K both ways, compositional accuracy per negative type, modality gap.

`python -m jobs.evaluate --config configs/demo.yaml eval.model=runs/demo/models/full` (a directory or an MLflow
`models:/name/version`; none: the untrained tiny twin of `model.family`). Embeddings are computed by a Ray Data actor
pool (`maple.stages.evaluate`); the metrics are pure functions (`maple.eval`). Writes `metrics.json` and
`report.md`; logs to MLflow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow

from jobs.common import evaluate
from maple.runtime import init_ray, parse_config
from maple.tracking import log_metrics, mlflow_run


def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    name = Path(cfg.eval.model).name if cfg.eval.model else "untrained"
    out = Path(cfg.run.output_dir) / "eval" / name
    with mlflow_run(cfg.run, "evaluate", cfg, run_name=f"{cfg.run.name}-eval-{name}"):
        metrics = evaluate(cfg, {name: cfg.eval.model}, out.parent)[name]
        log_metrics(metrics)
        mlflow.log_artifacts(str(out), "eval")
    print(json.dumps({"report": str(out / "report.md"), "t2i_r@1": metrics.get("t2i_r@1"),
                      "i2t_r@1": metrics.get("i2t_r@1"), "comp_all_accuracy": metrics.get("comp_all_accuracy")}))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
