"""Judge throughput: pairs/s of the `hf` judge per pair, `hf` batched and `vllm`, on the same tiny random Llama and
the same pairs, with a query's pairs kept together (prefix-ordered, as the mining job sends them) or shuffled.

    python bench/judge.py                       # 16 queries × 32 candidates, writes bench/results/judge.json
    python bench/judge.py --queries 8 --candidates 16 --hidden 256 --layers 4

Pairs: captions of the synthetic world (text→text; the Llama judge is text-only). Each mode scores every pair once
after a warm-up call; wall and process-CPU seconds are both recorded, since the machine may be shared (CPU seconds do
not grow with other processes' load, but vLLM's engine runs in a child process, whose CPU is not counted, so compare
wall times taken at the same load). Goal (issue 4): prefix-ordered vllm ≥ 3× per-pair hf. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "judge.json"


def make_pairs(n_queries: int, n_candidates: int, seed: int = 0) -> dict[str, list]:
    from maple.data.config import WorldConfig
    from maple.data.synth import describe, render_caption, sample_scene
    from maple.judge.base import make_pairs as columns

    world, rng = WorldConfig(), random.Random(seed)
    captions = [render_caption(describe(sample_scene(rng, world, set()), rng, world.relations))
                for _ in range(n_queries + n_candidates)]
    queries, candidates = captions[:n_queries], captions[n_queries:]
    return columns([{"query_id": f"q{i}", "query_text": q, "candidate_id": f"c{j}", "candidate_text": c}
                    for i, q in enumerate(queries) for j, c in enumerate(candidates)])


def shuffled(pairs: dict[str, list], seed: int = 0) -> dict[str, list]:
    order = np.random.default_rng(seed).permutation(len(pairs["query_id"]))
    return {k: [v[i] for i in order] for k, v in pairs.items()}


def timed(judge, pairs: dict[str, list]) -> dict[str, float]:
    judge.score({k: v[:8] for k, v in pairs.items()})  # warm-up: kernels, allocator, engine graphs
    wall, cpu = time.perf_counter(), time.process_time()
    scores = judge.score(pairs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(pairs["query_id"])
    return {"pairs": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "pairs_per_s": round(n / wall, 2),
            "nan": int(np.isnan(scores).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="hf batched; pairs per vllm engine call")
    parser.add_argument("--modes", default="hf_per_pair,hf_batched,vllm")
    args = parser.parse_args()

    import torch

    from maple.judge.config import JudgeConfig
    from maple.models.tiny_judge import build_tiny_judge

    model = build_tiny_judge(Path(tempfile.mkdtemp()) / "llama", "llama", hidden=args.hidden, layers=args.layers)
    ordered = make_pairs(args.queries, args.candidates)
    orders = {"prefix_ordered": ordered, "shuffled": shuffled(ordered)}
    base = JudgeConfig(model=str(model), dtype="float32", max_model_len=512)
    results: dict[str, dict] = {}
    for mode in args.modes.split(","):
        if mode == "hf_per_pair":
            from maple.judge.hf import HFJudge

            judge = HFJudge(base.model_copy(update={"backend": "hf", "batch_size": 1}))
        elif mode == "hf_batched":
            from maple.judge.hf import HFJudge

            judge = HFJudge(base.model_copy(update={"backend": "hf", "batch_size": args.batch_size}))
        elif mode == "vllm":
            from maple.judge.vllm import VLLMJudge

            judge = VLLMJudge(base.model_copy(update={"backend": "vllm", "batch_size": args.batch_size}))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        for name, pairs in orders.items():
            results[f"{mode}/{name}"] = timed(judge, pairs)
            print(mode, name, results[f"{mode}/{name}"], flush=True)
        del judge

    per_pair = results.get("hf_per_pair/prefix_ordered", {}).get("pairs_per_s")
    speedups = {k: round(v["pairs_per_s"] / per_pair, 2) for k, v in results.items()} if per_pair else {}
    report = {
        "model": {"kind": "llama", "hidden": args.hidden, "layers": args.layers, "head_dim": 64},
        "queries": args.queries, "candidates_per_query": args.candidates, "batch_size": args.batch_size,
        "results": results, "speedup_vs_hf_per_pair": speedups,
        "goal_vllm_prefix_ordered_3x_hf_per_pair": (speedups.get("vllm/prefix_ordered", 0) >= 3) if speedups else None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 1)},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["speedup_vs_hf_per_pair"], indent=1))


if __name__ == "__main__":  # vLLM spawns processes: the engine must not start on import
    main()
