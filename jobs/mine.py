"""Mine hard negatives with an LLM judge: Ray Data streams pairs → embed (actor pool, current embedder) → global
top-K retrieval (faiss) in each direction → judge every (query, candidate) and (query, positive) pair → UniME-V2
mining → Parquet shards named by input shard (JUDGED_SCHEMA), quarantine beside them, summary.json, one MLflow run.

`python -m jobs.mine --config configs/mine.yaml [section.key=value ...]` (`maple mine`); on a cluster
`ray job submit --working-dir . -- python -m jobs.mine --config ...`. A re-run skips the shards already written
(`<out>/judged/<shard>.parquet`). The pipeline: `maple.stages.mining`; the judge backends: docs/judge.md.
"""

from __future__ import annotations

import json
import sys

from jobs.common import mine
from maple.runtime import init_ray, parse_config


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    summary = mine(cfg)
    print(json.dumps({k: summary[k] for k in ("output", "counts", "throughput")}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
