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
import zlib
from pathlib import Path

import pyarrow as pa

from jobs.common import init_ray, parse_config
from maple.config import Config
from maple.rerank.task import RerankerTask, reranker_train_config


def mined_path(cfg: Config) -> Path:
    path = Path(cfg.reranker.input or Path(cfg.mine.output or Path(cfg.run.output_dir) / "mined") / "judged")
    if not path.exists() or (path.is_dir() and not any(path.glob("*.parquet"))):
        raise FileNotFoundError(f"reranker.input={path}: no mined Parquet shards there; run `maple mine` first "
                                f"(jobs/mine.py) or point reranker.input at its judged/ folder")
    return path


def is_val(row_id: str, fraction: float) -> bool:
    """A fixed share of the rows, by a hash of the id: the same rows on every worker, every run."""
    return zlib.crc32(str(row_id).encode()) % 10_000 < fraction * 10_000


def split_rows(batch: pa.Table, fraction: float, val: bool) -> pa.Table:
    """The batch's validation (or training) rows. In Arrow, so the schema stays: a row-wise filter re-infers the
    types, and a column that is null throughout the batch (positive_image in image-to-text rows) comes back
    mistyped."""
    keep = [is_val(row_id, fraction) == val for row_id in batch["id"].to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_()))


def datasets(cfg: Config) -> dict:
    import ray.data

    rows = ray.data.read_parquet(str(mined_path(cfg)))
    fraction = cfg.reranker.val_fraction
    if fraction <= 0:
        return {"train": rows}
    return {name: rows.map_batches(split_rows, batch_format="pyarrow", fn_kwargs={"fraction": fraction, "val": val})
            for name, val in (("train", False), ("val", True))}


def main(argv: list[str] | None = None):
    from maple.train.loop import run_training

    cfg = reranker_train_config(parse_config(argv, __doc__))
    init_ray(cfg)
    result = run_training(cfg, RerankerTask(), datasets(cfg), run_name=f"{cfg.run.name}-reranker")
    print(json.dumps({"model_dir": str(result.model_dir), "registry_uri": result.registry_uri,
                      "mlflow_run_id": result.mlflow_run_id,
                      **{k: v for k, v in result.metrics.items() if k.startswith("val_")}}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
