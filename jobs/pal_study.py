"""PAL data-scaling study: retrieval R@1 and zero-shot segmentation mIoU vs the number of paired examples, for PAL's
anchors and for the baseline the paper beats (a learned linear projection of the same frozen, mean-pooled features).

`python -m jobs.pal_study --config configs/pal.yaml --sizes 100,300,1000 --seeds 3 [--baseline-lr 1e-3] overrides`
(`maple pal-study`). Both methods train from the same cached features (one Ray Data pass of the frozen encoders), with
the same steps (train.steps), batch (train.batch_size), seeds and training subsets (the first N training pairs);
PAL uses train.lr, the baseline --baseline-lr. Test metrics on the world's test split, mean ± std over the seeds.
Writes <run.output_dir>/pal_study/{results.json, study.md, study.png} and logs them to MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlflow
import numpy as np

from jobs.common import world_dir
from maple.config import Config
from maple.data.features import FeatureTensors, encoders_dir, read_features
from maple.eval.metrics import metric_name
from maple.models.anchor import AnchorAligner
from maple.recipes.pal import build_head, feature_cache_dir, retrieval_from_features, train_head, zero_shot_from_cache
from maple.runtime import init_ray, parse_config
from maple.stages.features import prepare_features
from maple.tracking import mlflow_run

METHODS = {"pal": "PAL anchors", "linear": "linear projection"}
REPORTED = ("mean_r@1", "t2i_r@1", "i2t_r@1", "miou", "zs_accuracy")


def run_point(method: str, train: FeatureTensors, train_table, test: FeatureTensors, encoders: AnchorAligner,
              cfg: Config, lr: float, seed: int) -> dict[str, float]:
    """Train one head on `train` and measure it on `test`."""
    pal = cfg.model.pal
    head = build_head(method, train_table, pal.num_anchors, pal.tau_pool, seed, pal.anchor_init)
    start = time.perf_counter()
    losses = train_head(head, train, cfg.train.steps, cfg.train.batch_size, lr, pal.tau, seed)
    seconds = time.perf_counter() - start
    head.eval()
    metrics = retrieval_from_features(head, test)
    metrics.update(zero_shot_from_cache(head, test, encoders, cfg.world.shapes, cfg.world.image_size, "shape"))
    return {**metrics, "final_loss": losses[-1], "train_seconds": seconds}


def aggregate(points: list[dict]) -> list[dict]:
    """Mean and standard deviation (ddof 0) over seeds of each (method, size)."""
    rows = []
    for method in METHODS:
        for size in sorted({p["size"] for p in points}):
            runs = [p for p in points if p["method"] == method and p["size"] == size]
            row = {"method": method, "size": size, "seeds": len(runs)}
            for key in REPORTED:
                values = np.array([r[key] for r in runs], dtype=float)
                row[key], row[f"{key}_std"] = float(values.mean()), float(values.std())
            rows.append(row)
    return rows


def to_markdown(rows: list[dict], cfg: Config, baseline_lr: float) -> str:
    lines = [f"PAL data-scaling study: K={cfg.model.pal.num_anchors}, steps={cfg.train.steps}, "
             f"batch={cfg.train.batch_size}, lr PAL={cfg.train.lr}, lr linear={baseline_lr}, "
             f"test pairs={cfg.world.n_test}; mean ± std over {rows[0]['seeds']} seeds.", "",
             "| method | pairs | R@1 mean | R@1 t→i | R@1 i→t | shape mIoU | zero-shot acc |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f} ± {r[f'{k}_std']:.3f}" for k in REPORTED)
        lines.append(f"| {METHODS[r['method']]} | {r['size']} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "mean_r@1", "retrieval R@1 (mean of both ways)"),
                           (axes[1], "miou", "zero-shot segmentation mIoU (shapes)")):
        for method, label in METHODS.items():
            mine = [r for r in rows if r["method"] == method]
            ax.errorbar([r["size"] for r in mine], [r[key] for r in mine], yerr=[r[f"{key}_std"] for r in mine],
                        marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("paired training examples")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def study(cfg: Config, sizes: list[int], seeds: list[int], baseline_lr: float) -> dict:
    cfg.world.n_train = max(cfg.world.n_train, max(sizes))
    cache = feature_cache_dir(cfg.model.pal, cfg.run.output_dir)
    prepare_features(cfg.world, world_dir(cfg), cfg.model, cache, ("train", "test"), seed=cfg.run.seed,
                     batch_size=cfg.eval.batch_size)
    table, test = read_features(cache, "train"), FeatureTensors(read_features(cache, "test"))
    if table.num_rows < max(sizes):
        raise ValueError(f"the cached train split has {table.num_rows} pairs but the study asks for {max(sizes)}; "
                         f"delete {cache} or set model.pal.feature_cache to a new folder")
    encoders = AnchorAligner.from_pretrained(encoders_dir(cache))
    points = []
    for size in sizes:
        subset = table.slice(0, size)
        train = FeatureTensors(subset)
        for seed in seeds:
            for method in METHODS:
                lr = cfg.train.lr if method == "pal" else baseline_lr
                result = run_point(method, train, subset, test, encoders, cfg, lr, seed)
                points.append({"method": method, "size": size, "seed": seed, **result})
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in points[-1].items()
                                  if k in ("method", "size", "seed", "mean_r@1", "miou", "final_loss")}), flush=True)
    return {"points": points, "summary": aggregate(points)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sizes", default="100,300,1000", help="comma-separated numbers of training pairs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per point (run.seed, run.seed+1, ...)")
    parser.add_argument("--baseline-lr", type=float, default=1e-3, help="learning rate of the linear baseline")
    own, rest = parser.parse_known_args(argv)
    cfg = parse_config(rest, __doc__)
    sizes = [int(s) for s in own.sizes.split(",")]
    seeds = [cfg.run.seed + i for i in range(own.seeds)]
    init_ray(cfg.run)
    out = Path(cfg.run.output_dir) / "pal_study"
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_run(cfg.run, "pal_study", cfg, run_name=f"{cfg.run.name}-pal-study"):
        mlflow.log_params({"study.sizes": own.sizes, "study.seeds": own.seeds, "study.baseline_lr": own.baseline_lr})
        results = study(cfg, sizes, seeds, own.baseline_lr)
        for row in results["summary"]:
            for key in REPORTED:
                mlflow.log_metric(metric_name(f"{row['method']}_{key}"), row[key], step=row["size"])
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "study.md").write_text(to_markdown(results["summary"], cfg, own.baseline_lr))
        plot(results["summary"], out / "study.png")
        mlflow.log_artifacts(str(out), "pal_study")
    print((out / "study.md").read_text())
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
