"""The main job: the whole pipeline on the synthetic world, on an embedded local Ray, with an ablation.

synthesise the world → train an InfoNCE baseline on plain pairs → mine with the judge (the baseline embeds and
retrieves; reference judge by default) → train every variant from the baseline on the same judged data, steps and
seeds → train a reranker → evaluate everything in one pass of the evaluation job → write a report (Markdown table,
plots) → optionally serve the best model.

    maple demo                                  # configs/demo.yaml
    maple demo --judge vllm --judge-model PATH  # a real MLLM judge
    maple demo --judge-noise 0.1,0.3            # + how the gain falls as the judge's answers are flipped
    maple demo --serve                          # end by serving the best variant and its search page on 127.0.0.1
    maple demo --config configs/demo_tiny.yaml  # about a minute (the CI test)
    maple demo --config configs/demo_relations.yaml  # long runs in curriculum order (demo.curriculum), one seed
    maple demo --verbose                        # the libraries' logs on the console too

The console shows the stages (a progress bar each on a terminal, one line each otherwise), one line per finished
run, the warnings that need the user, and at the end the ablation table with where the report, the plots and the
MLflow UI are; what Ray, Ray Data, DeepSpeed, MLflow and transformers print or log goes to
<run.output_dir>/logs/demo.log (`maple.console`), and Ray's worker processes' logs are linked as logs/ray.

Every number in the report comes from the evaluation job's metrics; this module only aggregates and plots them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from jobs.common import build_search_index, check_training_gpus, evaluate, mine, train, train_reranker
from maple.config import Config, CurriculumStage
from maple.console import Console, Stage
from maple.data.synth import NEGATIVE_TYPES, synthesize
from maple.eval.ablation import aggregate, fine_grained_accuracy, markdown_table, text_table
from maple.eval.plots import plot_curves, plot_noise_sweep, plot_similarity_histograms, plot_type_accuracy
from maple.judge.backends import check_judge, check_judge_gpus
from maple.recipes.embedder import EmbedderTask
from maple.runtime import cluster_gpus, init_ray, parse_config
from maple.serving.http import check_port_free
from maple.tracking import log_metrics, mlflow_run, ui_command

log = logging.getLogger(__name__)

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
    parser.add_argument("--verbose", action="store_true")
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
    if known.verbose:
        extra.append("demo.verbose=true")
    if "--config" not in rest and Path(DEFAULT_RECIPE).exists():
        rest = ["--config", DEFAULT_RECIPE, *rest]
    return parse_config(rest + extra, __doc__)


def read_once(path: Path, tables: dict[Path, object]):
    """The demo's ~20 training runs read the same few tables (the world's train and val splits, the judged rows):
    each is read once and kept in Ray's object store (a few MB here); a read is seconds of Ray Data start-up."""
    import ray.data

    if path not in tables:
        tables[path] = ray.data.read_parquet(str(path)).materialize()
    return tables[path]


def train_embedder(cfg: Config, name: str, train_path: Path, steps: int, seed: int, init: str | None,
                   stage: Stage, tables: dict[Path, object]) -> dict:
    """One training run through the training job's machinery, ticking `stage` each step and adding a line when it
    ends; skipped when its export already exists. `tables`: the tables read so far (`read_once`)."""
    out = Path(cfg.run.output_dir) / "models" / name
    if (out / "maple_embedder.json").exists() and (out / "train_result.json").exists():
        stage.advance(steps)
        stage.finished(f"{name}: trained by an earlier run ({out})")
        return json.loads((out / "train_result.json").read_text())
    run_cfg = cfg.with_overrides(f"run.seed={seed}", f"train.steps={steps}", f"train.output={out}",
                                 f"model.name_or_path={init if init else 'null'}")
    world = Path(cfg.run.output_dir) / "world"
    datasets = {"train": read_once(train_path, tables), "val": read_once(world / "val", tables)}
    task = EmbedderTask(run_cfg.model, run_cfg.train, run_cfg.eval, seed=seed)
    started, ticks = time.perf_counter(), stage.count
    result = train(run_cfg, task, datasets, run_name=f"{cfg.run.name}-{name}", on_step=stage.advance)
    stage.advance(steps - (stage.count - ticks))  # training workers (train.num_workers > 0) tick nothing here
    stage.finished(f"{name}: {steps} steps in {time.perf_counter() - started:.0f} s")
    summary = {"model_dir": str(result.model_dir), "mlflow_run_id": result.mlflow_run_id}
    (out / "train_result.json").write_text(json.dumps(summary))
    return summary


def mine_with(cfg: Config, baseline: str, world: Path, out: Path, stage: Stage, flip_rate: float | None = None,
              count_queries: bool = True) -> Path:
    """The mining job's pipeline over `world`'s training split with `baseline` into `out`; `stage` counts the queries
    mined (`count_queries`) and gets a line when it ends."""
    overrides = [f"mine.model={baseline}", f"mine.input={world / 'train'}", f"mine.output={out}"]
    if flip_rate is not None:
        overrides.append(f"judge.noise_flip_rate={flip_rate}")
    started = time.perf_counter()
    summary = mine(cfg.with_overrides(*overrides), on_rows=stage.advance if count_queries else None)
    stage.finished(f"{out.name}: {summary['queries_this_run']} queries, {summary['judge_pairs_this_run']} pairs "
                   f"judged in {time.perf_counter() - started:.0f} s")
    return out / "judged"


@dataclass(frozen=True)
class TrainingStage:
    """One stage of the variants' training: `steps` on the judged rows mined from `world` (`cfg.world` narrowed to
    the stage); `suffix` names the stage's models (empty for the last, whose models are the variants')."""

    steps: int
    cfg: Config
    world: Path
    mined: Path
    suffix: str


def training_stages(cfg: Config) -> list[TrainingStage]:
    """The variants' training order. Without `demo.curriculum`, one stage: `demo.variant_steps` on the world
    (<out>/world, mined into <out>/mined). A curriculum stage that narrows the world has its own scenes (the same
    world seed, so the same held-out colour–shape combinations are kept out) under <out>/curriculum/stage<k>."""
    out = Path(cfg.run.output_dir)
    stages = cfg.demo.curriculum or [CurriculumStage(steps=cfg.demo.variant_steps)]
    result = []
    for k, stage in enumerate(stages):
        narrowed = [f"world.{key}={value}" for key, value in (("min_objects", stage.min_objects),
                                                              ("max_objects", stage.max_objects))
                    if value is not None and value != getattr(cfg.world, key)]
        if stage.relations is not None and stage.relations != cfg.world.relations:
            narrowed.append(f"world.relations={json.dumps(stage.relations)}")  # JSON is YAML's flow list
        folder = out / "curriculum" / f"stage{k}" if narrowed else out
        result.append(TrainingStage(stage.steps, cfg.with_overrides(*narrowed), folder / "world", folder / "mined",
                                    "" if k == len(stages) - 1 else f".stage{k}"))
    return result


def schedule_text(cfg: Config) -> str:
    """How the variants are trained, in words: '100 steps each' or '4,500 steps each, in 3 stages'."""
    stages = cfg.demo.curriculum
    steps = sum(s.steps for s in stages) if stages else cfg.demo.variant_steps
    start = "from the baseline" if cfg.demo.variant_init == "baseline" else "from scratch"
    return f"{start} ({steps:,} steps each" + (f", in {len(stages)} stages)" if stages else ")")


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
    """The issue's goal, checked against the measured numbers, stated plainly whichever way it went: full vs InfoNCE
    only, ≥ 10 points fine-grained beyond 2 std over ≥ 3 seeds, each recall@1 no more than 1 point below."""
    if "full" not in summary or "infonce" not in summary:
        return ""
    full, base = summary["full"], summary["infonce"]
    keys = ("fine_grained", "t2i_r@1", "i2t_r@1")
    if not all(full.get(k) and base.get(k) for k in keys):
        return ""
    (f, f_std, n_f), (b, b_std, n_b) = full["fine_grained"], base["fine_grained"]
    gain, spread, seeds = (f - b) * 100, 2 * max(f_std, b_std) * 100, min(n_f, n_b)
    t2i, i2t = ((full[k][0] - base[k][0]) * 100 for k in ("t2i_r@1", "i2t_r@1"))
    met = seeds >= 3 and gain >= 10 and gain > spread and min(t2i, i2t) >= -1
    spread_text = f"2 std = {spread:.1f}" if seeds > 1 else "one seed: no spread"
    return (f"Full method vs InfoNCE only, fine-grained (swap/replace) accuracy on held-out combinations: "
            f"{gain:+.1f} points ({spread_text}); recall@1 text→image {t2i:+.1f}, image→text {i2t:+.1f} points. "
            f"Goal (≥ 10 points beyond 2 std over ≥ 3 seeds, each recall@1 at most 1 point below): "
            f"{'met' if met else 'NOT met'}.\n")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_demo_args(list(sys.argv[1:] if argv is None else argv))
    demo, out = cfg.demo, Path(cfg.run.output_dir)
    unknown = [v for v in demo.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"demo.variants: unknown {unknown}; known: {sorted(VARIANTS)}")
    with Console(out / "logs", "demo", verbose=demo.verbose) as console:
        console.line(f"maple demo into {out}; " + ("the libraries' logs are shown here (--verbose)" if demo.verbose
                                                   else f"the libraries' logs go to {console.log_path}"))
        # Fail fast, before Ray starts: the port the demo ends by serving on; the judge's model, its Yes/No tokens...
        if demo.serve:
            check_port_free(cfg.serve.host, cfg.serve.port)
        check_judge(cfg.judge, needs_images=True, available_gpus=math.inf)
        ray_logs = init_ray(cfg.run, quiet=not demo.verbose)
        if ray_logs and not demo.verbose:
            link_ray_logs(console.log_path.parent, ray_logs)
        # ...and, before any work, the GPUs that the judge and the training ask for.
        gpus = cluster_gpus()
        check_judge_gpus(cfg.judge, gpus)
        check_training_gpus(cfg.train, gpus)
        metrics, specs, reranker, summary, report = run_pipeline(cfg, console)
        console.line(f"\ndone in {console.elapsed():.0f} s. Held-out attribute combinations, ×100, mean ± std over "
                     f"{demo.seeds} seed{'s' * (demo.seeds > 1)}:\n")
        console.line(text_table({k: v for k, v in summary.items() if "flip" not in k}))
        goal = goal_statement(summary).strip()
        console.line(f"\n{goal}\n" if goal else "")
        console.line(f"report:    {report}")
        console.line(f"plots:     {report.parent}/*.png")
        console.line(f"MLflow UI: {ui_command(cfg.run)}")
        if ray_logs:  # the local Ray this job started: stopped while what it prints still goes to the log
            import ray

            ray.shutdown()
    if demo.serve:
        print(f"serving the full variant and its search page on {cfg.serve.host} (Ctrl-C stops)", flush=True)
        serve_model(cfg, served_embedder(specs), reranker, search_page_indexes(out))
    return metrics


def served_embedder(specs: dict[str, str]) -> str:
    """What `--serve` serves: the full variant's first seed, else the baseline."""
    return specs.get("full-s0", specs["baseline"])


def search_page_indexes(out: Path) -> dict[str, Path]:
    """modality -> the folder of the index that `--serve` answers searches from (the test split's images, and
    their captions)."""
    return {"image": out / "index" / "images", "text": out / "index" / "captions"}


def link_ray_logs(log_dir: Path, ray_logs: str) -> None:
    """<run.output_dir>/logs/ray -> the local Ray session's own logs (workers' output, raylet, core workers), which
    Ray keeps in its temp folder (/tmp/ray/session_*/logs)."""
    link = log_dir / "ray"
    if link.is_symlink():
        link.unlink()
    if not link.exists() and Path(ray_logs).is_dir():
        link.symlink_to(ray_logs, target_is_directory=True)
    log.info("Ray's own logs (workers, raylet, core workers): %s", ray_logs)


def run_pipeline(cfg: Config, console: Console) -> tuple[dict, dict, str | None, dict, Path]:
    """The stages, each on the console; returns (metrics by model, model specs, the reranker, the ablation summary,
    the report)."""
    demo, out = cfg.demo, Path(cfg.run.output_dir)
    seeds = list(range(demo.seeds))
    with_reranker = demo.reranker and "full" in demo.variants
    n_stages = 5 + with_reranker + bool(demo.judge_noise_sweep) + demo.serve
    numbers = iter(range(1, n_stages + 1))

    def title(text: str) -> str:
        return f"[{next(numbers)}/{n_stages}] {text}"

    tables: dict[Path, object] = {}
    stages = training_stages(cfg)
    narrowed = [training for training in stages if training.world != out / "world"]
    with console.stage(title(f"synthesising the world into {out / 'world'}" + (
            f" and the curriculum's {len(narrowed)} narrowed world{'s' * (len(narrowed) > 1)}" if narrowed else ""))):
        synthesize(cfg.world, out / "world")
        for training in narrowed:
            synthesize(training.cfg.world, training.world)
    with mlflow_run(cfg.run, "demo", cfg, run_name=f"{cfg.run.name}-demo"):
        with console.stage(title(f"training the InfoNCE baseline on plain pairs ({demo.baseline_steps} steps)"),
                           total=demo.baseline_steps) as stage:
            baseline = train_embedder(variant_loss(cfg, "infonce"), "baseline", out / "world" / "train",
                                      demo.baseline_steps, seed=0, init=None, stage=stage, tables=tables)["model_dir"]

        with console.stage(title(f"mining with the {cfg.judge.backend} judge over the baseline's "
                                 f"top-{cfg.mine.top_k}"), unit="query") as stage:
            for training in stages:
                mine_with(training.cfg, baseline, training.world, training.mined, stage)
        judged = stages[-1].mined / "judged"  # the world's own judged rows: the reranker's and the sweep's

        runs: dict[str, dict] = {}
        with console.stage(title(f"training {len(demo.variants)} variants × {len(seeds)} seed"
                                 f"{'s' * (len(seeds) > 1)} {schedule_text(cfg)}"),
                           total=len(demo.variants) * len(seeds) * sum(s.steps for s in stages)) as stage:
            for variant in demo.variants:
                for seed in seeds:
                    init = baseline if demo.variant_init == "baseline" else None
                    for training in stages:  # each stage starts from the one before; the last is the variant
                        name = f"{variant}-s{seed}{training.suffix}"
                        result = train_embedder(variant_loss(training.cfg, variant), name, training.mined / "judged",
                                                training.steps, seed, init=init, stage=stage, tables=tables)
                        init = result["model_dir"]
                    runs[f"{variant}-s{seed}"] = result

        reranker = None
        if with_reranker:
            with console.stage(title(f"training the reranker on the judged data ({cfg.reranker.steps} steps)"),
                               total=cfg.reranker.steps) as stage:
                reranker = demo_reranker(cfg, judged, baseline, stage)

        sweep: dict[float, dict[str, dict]] = {}
        if demo.judge_noise_sweep:
            with console.stage(title(f"judge-noise sweep over flip rates {demo.judge_noise_sweep}: mine, then the "
                                     "full variant"),
                               total=len(demo.judge_noise_sweep) * len(seeds) * demo.variant_steps) as stage:
                for rate in demo.judge_noise_sweep:
                    noisy = mine_with(cfg, baseline, out / "world", out / f"mined-flip{rate}", stage,
                                      flip_rate=rate, count_queries=False)  # this stage counts training steps
                    sweep[rate] = {f"full-flip{rate}-s{seed}": train_embedder(
                        variant_loss(cfg, "full"), f"full-flip{rate}-s{seed}", noisy, demo.variant_steps, seed,
                        init=baseline, stage=stage, tables=tables) for seed in seeds}

        specs = {"baseline": baseline, **{name: info["model_dir"] for name, info in runs.items()}}
        for models in sweep.values():
            specs.update({name: info["model_dir"] for name, info in models.items()})
        reranked = {n: specs[n] for n in specs if n.startswith("full-s")} if reranker is not None else {}
        with console.stage(title("evaluating every model in one pass of the evaluation job"),
                           total=len(specs) + len(reranked), unit="model") as stage:
            started = time.perf_counter()
            metrics = reranker_rows(evaluate(cfg, specs, out / "eval", reranker=reranker, reranked=set(reranked)))
            stage.advance(len(specs) + len(reranked))
            stage.finished(f"{len(specs)} models{f' (+ {len(reranked)} with the reranker)' if reranked else ''} "
                           f"in {time.perf_counter() - started:.0f} s")
        for name, m in metrics.items():
            m["fine_grained"] = fine_grained_accuracy(m)
            log_metrics(m, prefix=f"{name}.")
        report = write_report(cfg, metrics, runs, sweep, out)
        mlflow.log_artifacts(str(out / "report"), "report")
    if demo.serve:
        indexes = search_page_indexes(out)
        with console.stage(title("indexing the test images and their captions for the search page"),
                           total=len(indexes), unit="index") as stage:
            started = time.perf_counter()
            for modality, folder in indexes.items():
                build_search_index(cfg.with_overrides(
                    f"serve.embedder={served_embedder(specs)}", f"serve.corpus={out / 'world' / 'test'}",
                    f"serve.index={folder}", f"serve.corpus_modality={modality}"))
                stage.advance()
            stage.finished(f"search page indexes in {time.perf_counter() - started:.0f} s ({out / 'index'})")
    return metrics, specs, reranker, summarise(metrics), report


def demo_reranker(cfg: Config, judged: Path, embedder: str, stage: Stage) -> str:
    """The reranker job's training (same machinery as the embedder's) on the judged data; skipped when done. Unless
    the recipe names a reranker, it is a cross-encoder over `embedder`'s towers: its zero-initialised head starts
    from that embedder's own ranking (over the tiny random twin's towers it would start from noise)."""
    out = Path(cfg.run.output_dir) / "models" / "reranker"
    steps = cfg.reranker.steps
    if (out / "maple_reranker.json").exists():
        stage.advance(steps)
        stage.finished(f"reranker: trained by an earlier run ({out})")
        return str(out)
    overrides = [f"reranker.input={judged}", f"reranker.output={out}"]
    if cfg.reranker.name_or_path is None:
        overrides.append(f"reranker.name_or_path={embedder}")
    started, ticks = time.perf_counter(), stage.count
    result = train_reranker(cfg.with_overrides(*overrides), judged, run_name=f"{cfg.run.name}-reranker",
                            on_step=stage.advance)
    stage.advance(steps - (stage.count - ticks))
    stage.finished(f"reranker: {steps} steps in {time.perf_counter() - started:.0f} s")
    return str(result.model_dir)


def reranker_rows(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """`full + reranker`: each full variant's retrieve-then-rerank metrics (UniME-V2's full reordering of the top k),
    moved out of its row into a row `full+reranker-s<seed>` of their own under the plain metric names, so the table
    compares like with like."""
    out = {}
    for name, m in metrics.items():
        out[name] = {key: value for key, value in m.items() if not key.startswith("rerank_")}
        reranked = {key.replace("rerank_full_", "").replace("rerank_comp_", "comp_"): value
                    for key, value in m.items() if key.startswith(("rerank_full_", "rerank_comp_"))}
        if reranked:
            out[name.replace("full-", "full+reranker-")] = reranked
    return out


def serve_model(cfg: Config, embedder: str, reranker: str | None, indexes: dict[str, Path]) -> None:
    """Hand over to the serve entrypoint (`python -m serve.app`, what `maple serve` runs) with this demo's models
    and indexes: the demo's process becomes the server's, which prints the search page's address (and opens it
    where there is a display)."""
    import ray

    ray.shutdown()
    argv = [sys.executable, "-m", "serve.app", "--open", f"run.output_dir={cfg.run.output_dir}",
            f"run.mlflow_tracking_uri={cfg.run.mlflow_tracking_uri}", f"serve.host={cfg.serve.host}",
            f"serve.port={cfg.serve.port}", f"serve.embedder={embedder}",
            f"serve.reranker={reranker if reranker else 'null'}",
            f"serve.index={json.dumps([str(folder) for folder in indexes.values()])}"]  # JSON is YAML's flow list
    os.execv(sys.executable, argv)


def summarise(metrics: dict[str, dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per-model metrics (`full-s0`, `full-s1`, ...) -> variant -> metric -> (mean, std, seeds)."""
    by_variant: dict[str, list[dict]] = {}
    for name, m in metrics.items():
        by_variant.setdefault(name.rsplit("-s", 1)[0] if "-s" in name else name, []).append(m)
    return aggregate(by_variant)


def write_report(cfg: Config, metrics: dict[str, dict], runs: dict, sweep: dict, out: Path) -> Path:
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(metrics)
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
             f"{cfg.demo.seeds} seeds; baseline {cfg.demo.baseline_steps} steps, variants {schedule_text(cfg)} "
             "on the same judged data.", "",
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
