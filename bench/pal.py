"""PAL benchmark: anchor-training samples/s from cached token features vs from raw images, and the cache's speed-up.

    python bench/pal.py                              # tiny random ViT + all-MiniLM-L6-v2, 256 pairs, batch 64
    python bench/pal.py --steps 50 --num-anchors 512

Both paths run the same `pal_step` on the same rows and captions. From raw images, each step also decodes the PNGs,
preprocesses them, runs the frozen ViT and the frozen text encoder (no grad); from the cache, each step only indexes
the precomputed token features (`FeatureTensors`). Also reported: the one-off cost of computing the cache (the
`TokenFeatures` stage, called in this process) and after how many epochs it pays for itself.

Wall and process-CPU seconds are both recorded (the machine may be shared; CPU seconds do not grow with other
processes' load). Writes bench/results/pal.json and prints a summary. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from maple.data.config import WorldConfig
from maple.data.features import FeatureTensors, caption_choice
from maple.data.images import decode_image
from maple.data.schema import FEATURES_SCHEMA
from maple.data.synth import synthesize
from maple.models.anchor import AnchorAligner
from maple.models.config import ModelConfig
from maple.recipes.pal import PalLoss, build_head, pal_step
from maple.stages.features import TokenFeatures

RESULTS = Path(__file__).parent / "results" / "pal.json"


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-anchors", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="pal-bench-"))
    synthesize(WorldConfig(n_train=args.rows, n_val=1, n_test=1, n_compositional=1, shard_size=args.rows), tmp)
    pairs = pq.read_table(next((tmp / "train").glob("*.parquet")))
    torch.manual_seed(0)
    AnchorAligner.tiny(ModelConfig(family="pal", pal={"num_anchors": args.num_anchors})).save_pretrained(tmp / "enc")
    stage = TokenFeatures(str(tmp / "enc"), batch_size=args.batch)
    aligner = stage.model

    holder = {}
    cache_wall, cache_cpu = timed(lambda: holder.update(table=stage(pairs)))
    features_table = holder["table"].drop_columns(["image_error"]).cast(FEATURES_SCHEMA)
    features = FeatureTensors(features_table)

    def batches(step: int) -> torch.Tensor:
        start = (step * args.batch) % max(args.rows - args.batch + 1, 1)
        return torch.arange(start, start + args.batch)

    heads = {key: build_head("pal", features_table, args.num_anchors, 0.03, seed=0) for key in ("warm", True, False)}

    def run(from_cache: bool, key) -> None:
        head = heads[key]
        optimizer, loss_fn = torch.optim.AdamW(head.parameters(), lr=1e-2), PalLoss(0.07)
        for step in range(args.steps):
            rows = batches(step)
            if from_cache:
                batch = features.batch(rows, epoch=0, seed=0)
            else:
                sub = pairs.take(pa.array(rows.numpy())).to_pylist()
                images = [decode_image(r["image"]) for r in sub]
                texts = [r["captions"][caption_choice(r["id"], len(r["captions"]), 0, 0)] for r in sub]
                image_tokens, image_mask = aligner.image_tokens(aligner.preprocess(images)["pixel_values"])
                text_tokens, text_mask = aligner.text_tokens(**aligner.tokenize(texts))
                batch = {"image_tokens": image_tokens, "image_mask": image_mask, "text_tokens": text_tokens,
                         "text_mask": text_mask.bool()}
            pal_step(head, loss_fn, batch, optimizer)

    run(True, "warm")  # warm-up: first-call allocations
    cached_wall, cached_cpu = timed(lambda: run(True, True))
    raw_wall, raw_cpu = timed(lambda: run(False, False))
    samples = args.steps * args.batch
    result = {
        "env": {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(), "device": "cpu",
                "load_avg_1m": os.getloadavg()[0],
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "setup": {"image_encoder": "tiny random ViT (hidden 64, 2 layers, 64 patches)",
                  "text_encoder": "all-MiniLM-L6-v2 (6 layers, 384-d)", "num_anchors": args.num_anchors,
                  "batch": args.batch, "steps": args.steps, "rows": args.rows},
        "cached": {"wall_s": cached_wall, "cpu_s": cached_cpu, "samples_per_s": samples / cached_wall,
                   "samples_per_cpu_s": samples / cached_cpu},
        "raw": {"wall_s": raw_wall, "cpu_s": raw_cpu, "samples_per_s": samples / raw_wall,
                "samples_per_cpu_s": samples / raw_cpu},
        "cache_build": {"rows": args.rows, "wall_s": cache_wall, "cpu_s": cache_cpu},
    }
    result["speedup_wall"] = result["cached"]["samples_per_s"] / result["raw"]["samples_per_s"]
    result["speedup_cpu"] = result["cached"]["samples_per_cpu_s"] / result["raw"]["samples_per_cpu_s"]
    # Epochs after which computing the cache once costs less than re-encoding every epoch (CPU seconds).
    raw_epoch_cpu = args.rows / result["raw"]["samples_per_cpu_s"]
    cached_epoch_cpu = args.rows / result["cached"]["samples_per_cpu_s"]
    result["break_even_epochs"] = cache_cpu / max(raw_epoch_cpu - cached_epoch_cpu, 1e-9)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"cached: {result['cached']['samples_per_s']:.0f} samples/s ({result['cached']['samples_per_cpu_s']:.0f} "
          f"per CPU-s); raw: {result['raw']['samples_per_s']:.0f} samples/s "
          f"({result['raw']['samples_per_cpu_s']:.0f} per CPU-s); speed-up {result['speedup_wall']:.1f}x wall, "
          f"{result['speedup_cpu']:.1f}x CPU; cache built in {cache_wall:.1f} s, pays off after "
          f"{result['break_even_epochs']:.2f} epochs; load avg {result['env']['load_avg_1m']:.1f}")
    return result


if __name__ == "__main__":
    main()
