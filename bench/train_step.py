"""Benchmark of the training step: bare vs under Ray Train + DeepSpeed, GradCache's cost, the largest batch that fits.

    python bench/train_step.py                       # all parts, CPU defaults, writes bench/results/train_step.json
    python bench/train_step.py --parts bare gradcache --batch 64 --steps 10

Parts:
- bare: `maple.train.step.train_step` alone (torch AdamW, no Ray, no DeepSpeed), seconds per step and samples/s at
  steady state (median after warm-up), peak RSS of the process.
- ray: the same model, batch and step under `run_training` (Ray Train V2, 1 worker, DeepSpeed ZeRO 0/2/3); the
  worker's per-step `step_time_s` from MLflow (median after warm-up), so the comparison is step against step.
- gradcache: the bare step with `gradcache_chunk` = batch/4 at the same batch.
- max_batch: the largest batch (doubling) whose step keeps the process's peak RSS under --memory-cap-mb, with and
  without GradCache; each probe runs in a fresh subprocess (peak RSS is per process).
Every figure is for the model printed in the JSON (random init), on the machine it ran on (see "device").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from maple.config import Config, load_config  # noqa: E402
from maple.data.config import WorldConfig  # noqa: E402


def model_overrides(args) -> list[str]:
    return [f"model.image_size={args.image_size}", f"model.tiny.hidden_size={args.hidden}",
            f"model.tiny.intermediate_size={args.hidden * 4}", f"model.tiny.num_layers={args.layers}",
            f"model.tiny.embed_dim={args.hidden}", f"model.tiny.num_heads={max(1, args.hidden // 32)}"]


def world(args) -> Path:
    from maple.data.synth import synthesize

    out = Path(args.work) / f"world-{args.image_size}"
    if not (out / "world.json").exists():
        synthesize(WorldConfig(n_train=max(512, 4 * args.batch), n_val=32, n_test=8, n_compositional=8,
                               image_size=args.image_size, shard_size=256), out)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_step(cfg: Config, world_dir: Path, batch_size: int, steps: int, gradcache_chunk: int | None) -> dict:
    """Time `train_step` on a fixed collated batch (collation excluded, as in the loop's step_time_s)."""
    import pyarrow.parquet as pq

    from maple.recipes.embedder import EmbedderTask
    from maple.train.batch import collate_pairs
    from maple.train.step import train_step

    task = EmbedderTask(cfg.model, cfg.train, cfg.eval)
    model, loss_fn = task.build(seed=0)
    optimizer = torch.optim.AdamW(task.trainable_parameters(model, loss_fn), lr=1e-4)
    table = pq.read_table(world_dir / "train").slice(0, batch_size)
    rows = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("id", "image", "captions")}
    batch = collate_pairs(model, rows, epoch=0, seed=0)
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        train_step(model, loss_fn, batch, optimizer, gradcache_chunk, cfg.train.max_grad_norm)
        times.append(time.perf_counter() - tick)
    warm = times[min(2, len(times) - 1):]
    step_s = statistics.median(warm)
    return {"batch": batch_size, "gradcache_chunk": gradcache_chunk, "step_s": step_s,
            "samples_per_s": batch_size / step_s, "peak_rss_mb": peak_rss_mb(), "steps_timed": len(warm)}


def ray_step(cfg: Config, world_dir: Path, batch_size: int, steps: int, stage: int, work: Path) -> dict:
    import mlflow
    import ray

    from maple.recipes.embedder import EmbedderTask
    from maple.tracking import training_run
    from maple.train.loop import run_training, storage_path

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.train = run_cfg.train.model_copy(update={
        "num_workers": 1, "zero_stage": stage, "batch_size": batch_size, "steps": steps,
        "checkpoint_every": 10 ** 6, "eval_every": 10 ** 6, "shuffle_buffer": 0})
    run_cfg.run = run_cfg.run.model_copy(update={"output_dir": str(work / f"ray-zero{stage}"),
                                                 "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}"})
    run_name = f"bench-zero{stage}-{int(time.time())}"
    target = training_run(run_cfg.run, "bench", run_name, storage_path(run_cfg.train, run_cfg.run))
    result = run_training(run_cfg.train, run_cfg.run, EmbedderTask(run_cfg.model, run_cfg.train, run_cfg.eval),
                          {"train": ray.data.read_parquet(str(world_dir / "train"))}, run_name, target)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    history = sorted((m.step, m.value) for m in client.get_metric_history(result.mlflow_run_id, "step_time_s"))
    memory = max(m.value for m in client.get_metric_history(result.mlflow_run_id, "memory_mb"))
    warm = [v for s, v in history if s > 2] or [v for _, v in history]
    step_s = statistics.median(warm)
    return {"zero_stage": stage, "batch": batch_size, "workers": 1, "step_s": step_s,
            "samples_per_s": batch_size / step_s, "worker_peak_rss_mb": memory, "steps_timed": len(warm)}


def probe(args, batch_size: int, gradcache_chunk: int | None) -> dict:
    """One bare step in a fresh process; returns its result (peak RSS is per process)."""
    command = [sys.executable, __file__, "--probe", str(batch_size), "--probe-chunk", str(gradcache_chunk or 0),
               "--image-size", str(args.image_size), "--hidden", str(args.hidden), "--layers", str(args.layers),
               "--work", args.work, "--steps", "2", "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"batch": batch_size, "failed": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_batch(args, gradcache: bool) -> dict:
    fits, tried = None, []
    batch = args.start_batch
    while batch <= args.max_probe_batch:
        result = probe(args, batch, batch // 8 if gradcache else None)
        tried.append(result)
        if "failed" in result or result["peak_rss_mb"] > args.memory_cap_mb:
            break
        fits = batch
        batch *= 2
    return {"gradcache": gradcache, "largest_batch_under_cap": fits, "probes": tried}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["bare", "ray", "gradcache", "max_batch"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--memory-cap-mb", type=float, default=2048.0)
    parser.add_argument("--start-batch", type=int, default=32)
    parser.add_argument("--max-probe-batch", type=int, default=1024)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "maple-bench-train"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train_step.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the bare step; 1 = what a Ray Train worker with 1 CPU gets")
    parser.add_argument("--probe", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--probe-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = load_config(None, model_overrides(args))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    world_dir = world(args)

    if args.probe:
        print(json.dumps(bare_step(cfg, world_dir, args.probe, args.steps, args.probe_chunk or None)))
        return

    results: dict = {
        "device": f"CPU only ({os.cpu_count()} logical cores, {platform.processor() or platform.machine()}); "
                  f"no GPU available to this run; torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": {"family": cfg.model.family, "image_size": args.image_size, "hidden": args.hidden,
                  "layers": args.layers},
        "batch": args.batch, "steps": args.steps, "memory_cap_mb": args.memory_cap_mb,
    }
    out = Path(args.out)
    if out.exists():  # keep parts measured by an earlier invocation
        results = {**json.loads(out.read_text()), **results}
    if "bare" in args.parts:
        results["bare"] = bare_step(cfg, world_dir, args.batch, args.steps, None)
        print("bare", results["bare"], flush=True)
    if "gradcache" in args.parts:
        results["gradcache"] = bare_step(cfg, world_dir, args.batch, args.steps, max(1, args.batch // 4))
        print("gradcache", results["gradcache"], flush=True)
    if "ray" in args.parts:
        results["ray"] = [ray_step(cfg, world_dir, args.batch, args.steps, stage, Path(args.work))
                          for stage in args.stages]
        print("ray", results["ray"], flush=True)
    if "max_batch" in args.parts:
        results["max_batch"] = [max_batch(args, False), max_batch(args, True)]
        print("max_batch", results["max_batch"], flush=True)
    if "bare" in results and "ray" in results:
        results["ray_overhead_vs_bare"] = {f"zero{r['zero_stage']}": r["step_s"] / results["bare"]["step_s"] - 1
                                          for r in results["ray"]}
    if "bare" in results and "gradcache" in results:
        results["gradcache_overhead"] = results["gradcache"]["step_s"] / results["bare"]["step_s"] - 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
