"""Reranker benchmark: reranked candidates per second for each kind on the same inputs, batched vs one pair at a time.

    python bench/rerank.py                                   # tiny twins, CPU
    python bench/rerank.py --size small --device cuda        # bigger random models (a GPU run)

Inputs: Q queries of the synthetic world (its captions for text→image, its rendered scenes for image→text), each with
the same k candidates of the other modality (k = 10, the evaluation's retrieve-then-rerank depth). Every kind scores
exactly these (query, candidate) pairs:

- `batched`: `Reranker.score(query, candidates)` once per query, all k candidates in one forward pass;
- `per_pair`: one `score(query, [candidate])` call per candidate.

Models are randomly initialised (the kinds' tiny twins, or `--size small`: wider and deeper twins of the same
families); speed does not depend on the weights' values. Wall and process-CPU seconds are both recorded: the machine
may be shared. Writes bench/results/rerank.json (entries merged by key) and prints a table. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py; scripts run as `python bench/<name>.py`

from maple.data.config import WorldConfig
from maple.data.synth import synthesize
from maple.models.config import RerankerConfig, TinyConfig
from maple.models.families import build_reranker

RESULTS = Path(__file__).parent / "results" / "rerank.json"
SIZES = {
    "tiny": TinyConfig(),  # the test twins: hidden 64, 2 layers
    "small": TinyConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, patch_size=8),
}


def world_inputs(queries: int, k: int, workdir: Path) -> tuple[list[str], list, list[str], list]:
    """Captions and images of a small synthetic world: (text queries, image candidates, image queries, text candidates)."""
    import pyarrow.parquet as pq

    from maple.data.images import decode_image

    synthesize(WorldConfig(n_train=queries + k, n_val=1, n_test=1, n_compositional=1, shard_size=10_000), workdir)
    rows = pq.read_table(workdir / "train").to_pylist()
    texts = [r["captions"][0] for r in rows]
    images = [decode_image(r["image"]) for r in rows]
    return texts[:queries], images[queries:queries + k], images[:queries], texts[queries:queries + k]


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_kind(kind: str, size: str, device: str, inputs, repeats: int) -> list[dict]:
    cfg = RerankerConfig(kind=kind, tiny=SIZES[size])
    model = build_reranker(cfg, seed=0).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    t_queries, i_cands, i_queries, t_cands = inputs
    rows = []
    for direction, queries, cands in (("t2i", t_queries, i_cands), ("i2t", i_queries, t_cands)):
        k = len(cands)
        model.score(queries[0], cands)  # warm-up: lazy inits, allocator
        modes = {
            "batched": lambda: [model.score(q, cands, batch_size=k) for q in queries],
            "per_pair": lambda: [model.score(q, [c]) for q in queries for c in cands],
        }
        for mode, fn in modes.items():
            best = min((timed(fn) for _ in range(repeats)), key=lambda t: t[0])
            pairs = len(queries) * k
            row = {"kind": kind, "size": size, "device": device, "direction": direction, "mode": mode,
                   "queries": len(queries), "k": k, "parameters": params, "wall_s": best[0], "cpu_s": best[1],
                   "candidates_per_s": pairs / best[0], "cpu_ms_per_candidate": 1e3 * best[1] / pairs,
                   "load_avg_1m": os.getloadavg()[0], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            rows.append(row)
            print(f"  {kind:13} {size:5} {direction} {mode:8}: {row['candidates_per_s']:8.1f} candidates/s "
                  f"({row['cpu_ms_per_candidate']:.2f} CPU ms/candidate, load {row['load_avg_1m']:.1f})")
    return rows


def merge(path: Path, rows: list[dict], env: dict) -> dict:
    key = lambda r: (r["kind"], r["size"], r["device"], r["direction"], r["mode"])  # noqa: E731
    old = json.loads(path.read_text()) if path.is_file() else {"results": []}
    fresh = {key(r) for r in rows}
    results = sorted([r for r in old["results"] if key(r) not in fresh] + rows, key=key)
    envs = {**old.get("env", {}), env["device"]: env}
    return {"env": envs, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=["cross_encoder", "generative"])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions; the fastest counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maple-bench-rerank"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    inputs = world_inputs(args.queries, args.k, args.workdir)
    env = {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(), "cpu": cpu_model(),
           "device": args.device,
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    rows = []
    for kind in args.kinds:
        rows.extend(bench_kind(kind, args.size, args.device, inputs, args.repeats))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merge(args.out, rows, env), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
