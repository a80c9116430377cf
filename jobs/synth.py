"""Write the synthetic world as Parquet shards: `python -m jobs.synth [--config ...] world.n_train=5000`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maple.data.synth import synthesize
from maple.runtime import parse_config


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    out = Path(cfg.run.output_dir) / "world"
    summary = synthesize(cfg.world, out)
    print(json.dumps({"output": str(out), **summary["splits"]}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
