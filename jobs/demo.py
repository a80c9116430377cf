"""The main job: the whole pipeline on the synthetic world, on an embedded local Ray.

Stages that have landed run in order; this version synthesises the world and evaluates the untrained tiny embedder
(the mining, training and serving stages join as they land).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs.common import init_ray, parse_config
from jobs.evaluate import evaluate
from maple.data.synth import synthesize
from maple.eval.report import to_markdown
from maple.tracking import mlflow_run, ui_command


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv or ["--config", "configs/demo.yaml"] if Path("configs/demo.yaml").exists() else argv,
                       __doc__)
    out = Path(cfg.run.output_dir)
    world = out / "world"
    print(f"[1/2] synthesising the world into {world}", flush=True)
    synthesize(cfg.world, world)
    init_ray(cfg)
    print("[2/2] evaluating the untrained tiny embedder", flush=True)
    with mlflow_run(cfg, "demo"):
        metrics = evaluate(cfg, None, "untrained")
    report = out / "report.md"
    report.write_text(to_markdown(metrics, "maple demo (untrained baseline; training stages not yet in the demo)"))
    print(f"report: {report}\nMLflow UI: {ui_command(cfg)}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
