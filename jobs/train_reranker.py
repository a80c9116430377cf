"""Train the reranker (UniME-V2: pairwise Yes/No + listwise "(k)") on the mining job's output, with the embedder's
Ray Train + DeepSpeed + MLflow + checkpoint machinery (`maple.train.loop.run_training` with a `RerankerTask`).

`python -m jobs.train_reranker --config configs/reranker.yaml [section.key=value ...]` (`maple train-reranker`); on a
cluster `ray job submit --working-dir . -- python -m jobs.train_reranker --config ...`. Reads JUDGED_SCHEMA shards
(`reranker.input`, default <mine.output>/judged); holds out `reranker.val_fraction` of the rows by a hash of their id;
writes the reranker to `reranker.output` (default <run.output_dir>/models/reranker) and registers it in MLflow.
See docs/reranking.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs.common import train_reranker
from maple.config import Config
from maple.runtime import init_ray, parse_config


def mined_path(cfg: Config) -> Path:
    path = Path(cfg.reranker.input or Path(cfg.mine.output or Path(cfg.run.output_dir) / "mined") / "judged")
    if not path.exists() or (path.is_dir() and not any(path.glob("*.parquet"))):
        raise FileNotFoundError(f"reranker.input={path}: no mined Parquet shards there; run `maple mine` first "
                                f"(jobs/mine.py) or point reranker.input at its judged/ folder")
    return path


def main(argv: list[str] | None = None):
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    result = train_reranker(cfg, mined_path(cfg), run_name=f"{cfg.run.name}-reranker")
    print(json.dumps({"model_dir": str(result.model_dir), "registry_uri": result.registry_uri,
                      "mlflow_run_id": result.mlflow_run_id,
                      **{k: v for k, v in result.metrics.items() if k.startswith("val_")}}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
