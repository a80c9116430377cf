"""Import your own image-text pairs: read them in any layout maple reads (`data.format`: imagefolder — a folder of
images with a captions CSV / TSV / JSONL —, coco, webdataset, parquet), validate every row, and write the good pairs
as Parquet shards split into train / val / test under <run.output_dir>/world, where `maple mine`, `maple train`,
`maple eval` and `maple index` look by default. Rows that cannot be used go to <run.output_dir>/world/quarantine/
with the reason; nothing is dropped silently.

`python -m jobs.import_data --config configs/your-data.yaml data.path=/data/photos` (`maple data import`); on a
cluster `ray job submit --working-dir . -- python -m jobs.import_data --config ...`. `data.split=test` imports a
held-out set of your own as the test split (docs/your-data.md). Prints the counts as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow

from maple.runtime import init_ray, parse_config
from maple.stages.read import import_pairs
from maple.tracking import log_metrics, mlflow_run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    with mlflow_run(cfg.run, "import", cfg, run_name=f"{cfg.run.name}-import"):
        summary = import_pairs(cfg.data, Path(cfg.run.output_dir) / "world")
        log_metrics({**{f"pairs_{split}": n for split, n in summary["splits"].items()},
                     "quarantined": summary["quarantined"]})
        mlflow.log_dict(summary, "import_summary.json")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
