"""Load benchmark of the Serve application: batched vs unbatched embedding, same model, over loopback HTTP.

For each model size and each mode (batched: `max_batch_size` 32; unbatched: `max_batch_size` 1) the application of
serve/app.py is deployed on a local Ray, then closed-loop clients (1, 8, 32 at once) each send one-text
`/v1/embeddings` requests back to back for `--seconds`; requests/s, p50 and p99 latency are recorded.

    python bench/serve_load.py                       # -> bench/results/serve_load.json
    python bench/serve_load.py --sizes tiny --seconds 5

Sizes: "tiny" is the demo twin (64-wide, 2 layers: the model costs little, so HTTP and Serve overheads dominate);
"base" is a randomly initialised CLIP of ViT-B/32 width and depth (512-wide, 12 layers), a realistic per-input cost.
Results are documented in docs/benchmarks/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, embed_dim=64),
    "base": dict(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048, embed_dim=512),
}
WORDS = ("small large red green blue yellow purple white circle square triangle diamond left of right of above below "
         "a and").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_model(size: str, folder: Path) -> str:
    from maple.models.config import ModelConfig, TinyConfig
    from maple.models.families import build_embedder

    path = folder / f"clip-{size}"
    build_embedder(ModelConfig(tiny=TinyConfig(**SIZES[size])), seed=0).save_pretrained(path)
    return str(path)


def model_only(model_path: str, batch: int, seconds: float) -> float:
    """Inputs/s of the embedder alone (no HTTP, no Serve) at one batch size: the ceiling of what batching can gain
    on this machine."""
    from maple.models.families import load_embedder
    from maple.serving.models import embed_contents

    model = load_embedder(model_path).eval()
    rng = random.Random(0)
    embed_contents(model, [random_caption(rng) for _ in range(batch)])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embed_contents(model, [random_caption(rng) for _ in range(batch)])
        done += batch
    return round(done / (time.perf_counter() - start), 1)


def random_caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))


async def closed_loop(url: str, clients: int, seconds: float, warmup_s: float) -> dict:
    """`clients` coroutines each send a request as soon as their previous one returns."""
    import httpx

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

    async def client(seed: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while (now := time.perf_counter()) < stop_at:
            response = await http.post(url, json={"input": random_caption(rng)})
            done = time.perf_counter()
            if now >= measure_from:
                if response.status_code == 200:
                    latencies.append(done - now)
                else:
                    errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": seconds,
            "requests_per_s": round(len(latencies) / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=sorted(SIZES))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from serve.app import build_app

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    results: dict = {"benchmark": "bench/serve_load.py", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "load_average_at_start": os.getloadavg()},
                     "ray": ray.__version__, "device": "cpu", "request": "one text per /v1/embeddings request",
                     "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        results["model_only_inputs_per_s"] = {}
        for size in args.sizes:
            model = save_model(size, Path(tmp))
            results["model_only_inputs_per_s"][size] = {
                str(b): model_only(model, b, args.seconds / 2) for b in (1, args.batch_size)}
            print(json.dumps({size: results["model_only_inputs_per_s"][size]}), flush=True)
            for mode, batch in (("batched", args.batch_size), ("unbatched", 1)):
                app = build_app({"embedder": model, "max_batch_size": batch, "batch_wait_timeout_s": 0.01})
                serve.run(app, name="maple", route_prefix="/")
                stats = serve.get_deployment_handle("Embedder", app_name="maple").batch_stats
                for clients in args.clients:
                    before = stats.remote().result()
                    run = asyncio.run(closed_loop(url, clients, args.seconds, args.warmup))
                    after = stats.remote().result()
                    mean_batch = (after["inputs"] - before["inputs"]) / max(after["batches"] - before["batches"], 1)
                    run.update(model=size, mode=mode, max_batch_size=batch, mean_batch_size=round(mean_batch, 2))
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
                serve.delete("maple")
    serve.shutdown()
    ray.shutdown()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    top = max(args.clients)
    rate = {(r["model"], r["mode"], r["clients"]): r["requests_per_s"] for r in results["runs"]}
    results["batched_over_unbatched_at_max_clients"] = {
        size: round(rate[(size, "batched", top)] / max(rate[(size, "unbatched", top)], 1e-9), 2)
        for size in args.sizes}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results["batched_over_unbatched_at_max_clients"]))
    return results


if __name__ == "__main__":
    main()
