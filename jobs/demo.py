"""The main job: the whole pipeline on the synthetic world, on an embedded local Ray, with an ablation.

synthesise the world → train an InfoNCE baseline on plain pairs → mine with the judge (the baseline embeds and
retrieves; reference judge by default) → train every variant from the baseline on the same judged data, steps and
seeds → train a reranker → evaluate everything in one pass of the evaluation job → write a report (Markdown table,
plots) → optionally serve the best model.

    maple demo                                  # configs/demo.yaml
    maple demo --judge vllm --judge-model PATH  # a real MLLM judge
    maple demo --judge-noise 0.1,0.3            # + how the gain falls as the judge's answers are flipped
    maple demo --serve                          # end by serving the best variant on 127.0.0.1
    maple demo --config configs/demo_tiny.yaml  # about a minute (the CI test)

Every number in the report comes from the evaluation job's metrics; this module only aggregates and plots them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import mlflow
import numpy as np

from jobs.common import evaluate, mine, train, train_reranker
from maple.config import Config
from maple.data.synth import NEGATIVE_TYPES, synthesize
from maple.eval.ablation import aggregate, fine_grained_accuracy, markdown_table
from maple.eval.plots import plot_curves, plot_noise_sweep, plot_similarity_histograms, plot_type_accuracy
from maple.recipes.embedder import EmbedderTask
from maple.runtime import init_ray, parse_config
from maple.tracking import log_metrics, mlflow_run, ui_command

# Each variant's loss terms, every one stated, so the recipe's own loss settings cannot leak into the comparison:
# (InfoNCE's extra negatives: none | the judge's mined ones | the rewriter's, unjudged (NegCLIP); MAPLE's RPA over the
# judged preference ranking; UniME-V2's soft labels). λ and γ are demo.rpa_weight and demo.kl_weight, one value for
# every variant that uses the term.
VARIANTS = {
    "infonce": (None, False, False),
    "negclip": ("rewrites", False, False),
    "hard_negatives": ("mined", False, False),
    "soft_label": ("mined", False, True),
    "rpa": ("mined", True, False),
    "full": ("mined", True, True),
}


def variant_loss(cfg: Config, variant: str) -> Config:
    negatives, rpa, soft = VARIANTS[variant]
    return cfg.with_overrides(
        f"train.loss.hard_negatives={str(negatives is not None).lower()}",
        f"train.loss.hard_negative_source={negatives or 'mined'}", f"train.loss.rpa={cfg.demo.rpa if rpa else 'none'}",
        f"train.loss.rpa_weight={cfg.demo.rpa_weight}", f"train.loss.kl_weight={cfg.demo.kl_weight if soft else 0.0}")


DEFAULT_RECIPE = "configs/demo.yaml"


def parse_demo_args(argv: list[str]) -> Config:
    """The demo's own flags become config overrides; everything else goes to the common job parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--judge", choices=["reference", "hf", "vllm"])
    parser.add_argument("--judge-model")
    parser.add_argument("--judge-noise", help="comma-separated flip rates of the reference judge, e.g. 0.1,0.3")
    parser.add_argument("--serve", action="store_true")
    known, rest = parser.parse_known_args(argv)
    extra = []
    if known.judge:
        extra.append(f"judge.backend={known.judge}")
    if known.judge_model:
        extra.append(f"judge.model={known.judge_model}")
    if known.judge_noise:
        extra.append(f"demo.judge_noise_sweep=[{known.judge_noise}]")
    if known.serve:
        extra.append("demo.serve=true")
    if "--config" not in rest and Path(DEFAULT_RECIPE).exists():
        rest = ["--config", DEFAULT_RECIPE, *rest]
    return parse_config(rest + extra, __doc__)


def train_embedder(cfg: Config, name: str, train_path: Path, steps: int, seed: int, init: str | None) -> dict:
    """One training run through the training job's machinery; skipped when its export already exists."""
    import ray.data

    out = Path(cfg.run.output_dir) / "models" / name
    if (out / "maple_embedder.json").exists() and (out / "train_result.json").exists():
        return json.loads((out / "train_result.json").read_text())
    run_cfg = cfg.with_overrides(f"run.seed={seed}", f"train.steps={steps}", f"train.output={out}",
                                 f"model.name_or_path={init if init else 'null'}")
    world = Path(cfg.run.output_dir) / "world"
    datasets = {"train": ray.data.read_parquet(str(train_path)), "val": ray.data.read_parquet(str(world / "val"))}
    task = EmbedderTask(run_cfg.model, run_cfg.train, run_cfg.eval, seed=seed)
    result = train(run_cfg, task, datasets, run_name=f"{cfg.run.name}-{name}")
    summary = {"model_dir": str(result.model_dir), "mlflow_run_id": result.mlflow_run_id}
    (out / "train_result.json").write_text(json.dumps(summary))
    return summary


def mine_with(cfg: Config, baseline: str, out: Path, flip_rate: float | None = None) -> Path:
    overrides = [f"mine.model={baseline}", f"mine.input={Path(cfg.run.output_dir) / 'world' / 'train'}",
                 f"mine.output={out}"]
    if flip_rate is not None:
        overrides.append(f"judge.noise_flip_rate={flip_rate}")
    mine(cfg.with_overrides(*overrides))
    return out / "judged"


def training_curves(runs: dict[str, dict], metric: str = "loss") -> dict[str, list[tuple[int, float]]]:
    client = mlflow.tracking.MlflowClient()
    curves = {}
    for name, info in runs.items():
        try:
            history = client.get_metric_history(info["mlflow_run_id"], metric)
        except mlflow.exceptions.MlflowException:
            continue
        curves[name] = [(m.step, m.value) for m in history]
    return curves


def goal_statement(summary: dict) -> str:
    """The issue's goal, checked against the measured numbers, stated plainly whichever way it went."""
    if "full" not in summary or "infonce" not in summary:
        return ""
    f, b = summary["full"].get("fine_grained"), summary["infonce"].get("fine_grained")
    r_f, r_b = summary["full"].get("t2i_r@1"), summary["infonce"].get("t2i_r@1")
    if not (f and b and r_f and r_b):
        return ""
    gain, spread = (f[0] - b[0]) * 100, 2 * max(f[1], b[1]) * 100
    recall = (r_f[0] - r_b[0]) * 100
    met = gain >= 10 and gain > spread and recall >= -2 * max(r_f[1], r_b[1]) * 100
    return (f"Full method vs InfoNCE only, fine-grained (swap/replace) accuracy on held-out combinations: "
            f"{gain:+.1f} points (2 std = {spread:.1f}); text→image recall@1 {recall:+.1f} points. "
            f"Goal (≥ 10 points beyond 2 std without losing recall@1): {'met' if met else 'NOT met'}.\n")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_demo_args(list(sys.argv[1:] if argv is None else argv))
    demo, out = cfg.demo, Path(cfg.run.output_dir)
    unknown = [v for v in demo.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"demo.variants: unknown {unknown}; known: {sorted(VARIANTS)}")
    seeds = list(range(demo.seeds))
    n_stages = 6 + bool(demo.judge_noise_sweep) + demo.serve
    started = time.perf_counter()

    def stage(k: int, text: str) -> None:
        print(f"[{k}/{n_stages}] {text}  ({time.perf_counter() - started:.0f} s)", flush=True)

    stage(1, f"synthesising the world into {out / 'world'}")
    synthesize(cfg.world, out / "world")
    init_ray(cfg.run)
    with mlflow_run(cfg.run, "demo", cfg, run_name=f"{cfg.run.name}-demo"):
        stage(2, f"training the InfoNCE baseline ({demo.baseline_steps} steps) on plain pairs")
        baseline = train_embedder(variant_loss(cfg, "infonce"), "baseline",
                                  out / "world" / "train", demo.baseline_steps, seed=0, init=None)["model_dir"]

        stage(3, f"mining with the {cfg.judge.backend} judge over the baseline's top-{cfg.mine.top_k}")
        judged = mine_with(cfg, baseline, out / "mined")

        runs: dict[str, dict] = {}
        for variant in demo.variants:
            for seed in seeds:
                stage(4, f"training variant {variant!r}, seed {seed} ({demo.variant_steps} steps)")
                runs[f"{variant}-s{seed}"] = train_embedder(variant_loss(cfg, variant),
                                                            f"{variant}-s{seed}", judged, demo.variant_steps, seed,
                                                            init=baseline)

        reranker = None
        if demo.reranker and "full" in demo.variants:
            stage(5, "training the reranker on the judged data")
            reranker = demo_reranker(cfg, judged, baseline)

        sweep: dict[float, dict[str, dict]] = {}
        for rate in demo.judge_noise_sweep:
            stage(6, f"judge-noise sweep: flip rate {rate}")
            noisy = mine_with(cfg, baseline, out / f"mined-flip{rate}", flip_rate=rate)
            sweep[rate] = {f"full-flip{rate}-s{seed}": train_embedder(
                variant_loss(cfg, "full"), f"full-flip{rate}-s{seed}", noisy,
                demo.variant_steps, seed, init=baseline) for seed in seeds}

        stage(n_stages - demo.serve, "evaluating every model in one pass of the evaluation job")
        specs = {"baseline": baseline, **{name: info["model_dir"] for name, info in runs.items()}}
        for models in sweep.values():
            specs.update({name: info["model_dir"] for name, info in models.items()})
        metrics = evaluate(cfg, specs, out / "eval")
        if reranker is not None:
            metrics.update(rerank_metrics(cfg, {n: specs[n] for n in specs if n.startswith("full-s")}, reranker, out))
        for name, m in metrics.items():
            m["fine_grained"] = fine_grained_accuracy(m)
            log_metrics(m, prefix=f"{name}.")
        report = write_report(cfg, metrics, runs, sweep, out)
        mlflow.log_artifacts(str(out / "report"), "report")
    print(f"report: {report}\nMLflow UI: {ui_command(cfg.run)}\ntotal: {time.perf_counter() - started:.0f} s",
          flush=True)
    if demo.serve:
        stage(n_stages, "serving the full variant on 127.0.0.1 (Ctrl-C stops)")
        serve_model(cfg, specs.get("full-s0", baseline), reranker)
    return metrics


def demo_reranker(cfg: Config, judged: Path, embedder: str) -> str:
    """The reranker job's training (same machinery as the embedder's) on the judged data; skipped when done. Unless
    the recipe names a reranker, it is a cross-encoder over `embedder`'s towers: its zero-initialised head starts
    from that embedder's own ranking (over the tiny random twin's towers it would start from noise)."""
    out = Path(cfg.run.output_dir) / "models" / "reranker"
    if (out / "maple_reranker.json").exists():
        return str(out)
    overrides = [f"reranker.input={judged}", f"reranker.output={out}"]
    if cfg.reranker.name_or_path is None:
        overrides.append(f"reranker.name_or_path={embedder}")
    return str(train_reranker(cfg.with_overrides(*overrides), judged, run_name=f"{cfg.run.name}-reranker").model_dir)


def rerank_metrics(cfg: Config, embedders: dict[str, str], reranker: str, out: Path) -> dict[str, dict[str, float]]:
    """`full + reranker`: the evaluation job's retrieve-then-rerank metrics over each seed of the full variant
    (UniME-V2's full reordering of the top k), under the plain metric names so the table compares like with like."""
    reranked = evaluate(cfg, embedders, out / "eval-reranked", reranker=reranker)
    renamed = {}
    for name, m in reranked.items():
        renamed[name.replace("full-", "full+reranker-")] = {
            key.replace("rerank_full_", "").replace("rerank_comp_", "comp_"): value for key, value in m.items()
            if key.startswith(("rerank_full_", "rerank_comp_"))}
    return renamed


def serve_model(cfg: Config, embedder: str, reranker: str | None) -> None:
    """Hand over to the serve entrypoint (`python -m serve.app`, what `maple serve` runs) with this demo's models:
    the demo's process becomes the server's."""
    import ray

    ray.shutdown()
    argv = [sys.executable, "-m", "serve.app", f"run.output_dir={cfg.run.output_dir}",
            f"run.mlflow_tracking_uri={cfg.run.mlflow_tracking_uri}", f"serve.host={cfg.serve.host}",
            f"serve.port={cfg.serve.port}", f"serve.embedder={embedder}",
            f"serve.reranker={reranker if reranker else 'null'}"]
    os.execv(sys.executable, argv)


def write_report(cfg: Config, metrics: dict[str, dict], runs: dict, sweep: dict, out: Path) -> Path:
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    by_variant: dict[str, list[dict]] = {}
    for name, m in metrics.items():
        by_variant.setdefault(name.rsplit("-s", 1)[0] if "-s" in name else name, []).append(m)
    summary = aggregate(by_variant)
    types = list(NEGATIVE_TYPES)
    plot_type_accuracy({k: v for k, v in summary.items() if "flip" not in k}, types, folder / "type_accuracy.png")
    sims = {}
    for name in ["baseline", *[f"{v}-s0" for v in cfg.demo.variants]]:
        path = out / "eval" / name / "similarities.npz"
        if path.exists():
            data = np.load(path)
            sims[name] = {"matched": data["matched"], "unmatched": data["unmatched"]}
    plot_similarity_histograms(sims, folder / "similarity_histograms.png")
    plot_curves(training_curves({k: v for k, v in runs.items() if k.endswith("-s0")}), folder / "training_loss.png",
                "training loss")
    # the mining job's histogram of the judge's scores by source (positives, retrieved, rewritten)
    if (out / "mined" / "score_histogram.png").exists():
        shutil.copyfile(out / "mined" / "score_histogram.png", folder / "judge_scores.png")
    lines = [f"# maple demo — {cfg.run.name}", "",
             f"World: {cfg.world.n_train} training pairs, {cfg.world.n_test} test images, "
             f"{cfg.world.n_compositional} compositional rows; judge: {cfg.judge.backend}; "
             f"{cfg.demo.seeds} seeds; baseline {cfg.demo.baseline_steps} steps, variants {cfg.demo.variant_steps} "
             "steps from the baseline on the same judged data.", "",
             "Recall ×100 on the retrieval test; compositional accuracy ×100 on held-out attribute combinations "
             "(mean ± std over seeds). Fine-grained = mean of the swap/replace types.", "",
             markdown_table({k: v for k, v in summary.items() if "flip" not in k}, types, "held_out"), "",
             "All combinations:", "", markdown_table({k: v for k, v in summary.items() if "flip" not in k}, types,
                                                     "all"), "",
             goal_statement(summary),
             "![accuracy per negative type](type_accuracy.png)", "",
             "![similarity histograms](similarity_histograms.png)", "", "![training loss](training_loss.png)", "",
             "![judge scores by source](judge_scores.png)", ""]
    if sweep and "infonce" in summary:
        base = summary["infonce"]["fine_grained"]
        points = [(0.0, summary["full"]["fine_grained"][0] - base[0], summary["full"]["fine_grained"][1])]
        for rate in sweep:
            stat = summary.get(f"full-flip{rate}", {}).get("fine_grained")
            if stat:
                points.append((rate, stat[0] - base[0], stat[1]))
        plot_noise_sweep(points, folder / "judge_noise.png", "reference judge flip rate")
        lines += ["## Judge noise", "", "| flip rate | fine-grained gain over InfoNCE (points) |", "|---|---|",
                  *[f"| {x} | {g * 100:+.1f} ± {s * 100:.1f} |" for x, g, s in points], "",
                  "![judge noise](judge_noise.png)", ""]
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
