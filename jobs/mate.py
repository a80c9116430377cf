"""MATE recipe: connect images with long texts through an LLM text embedder and a staged projection (arXiv 2407.09541).

`python -m jobs.mate --config configs/mate.yaml [section.key=value ...]` (`maple mate`). Per seed in model.mate.seeds:

  0. the VLM: model.mate.vlm by name or path, else the tiny CLIP twin trained on the world's *short* captions with
     a 77-token text window (EmbedderTask). It is also the baseline: a CLIP-style dual encoder whose window truncates;
  1. stage 1a "captions":  P(VLM-text(caption)) -> LLM(caption)                    (text only, P trains)
     stage 1b "documents": P(VLM-text(caption)) -> LLM(long caption | document)    (text only, P trains)
  2. stage 2 "images":     P(VLM-image(x)) -> LLM(caption(x)), few pairs          (P + LoRA on the image encoder)
  3. the long-text report: recall@1 image ⇄ long caption and image ⇄ document on the test split, MATE and baseline.

Once per world (seed-independent): the long texts (`maple.data.long_text`) and the frozen LLM's vectors of every text
(Ray Data, `EmbedColumns` over the untrained MATE model, whose text side is the LLM). Every training stage is the one
Ray Train + DeepSpeed loop (`maple.train.loop.run_training`) with `MateTask`, an MLflow run of its own tagged as a
child of this job's parent run; a finished stage (its exported model directory) is skipped on a re-run and an
interrupted one resumes from its checkpoints. Writes <run.output_dir>/mate/report.md (mean ± std over the seeds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np

from jobs.common import train, world_dir
from maple.config import Config
from maple.data.files import clear_partial_output
from maple.data.long_text import write_long_texts
from maple.data.synth import synthesize
from maple.eval.metrics import metric_name, retrieval_metrics
from maple.models.batch_inference import EmbedColumns
from maple.models.embedder import MANIFEST
from maple.models.families import build_embedder
from maple.recipes.embedder import EmbedderTask
from maple.recipes.mate import MateTask
from maple.runtime import init_ray, parse_config
from maple.stages.evaluate import embed_table
from maple.tracking import mlflow_run, model_dir, tracking_uri

TEXTS = ("caption", "long_caption", "document")
MODELS = {"mate": "MATE (VLM image encoder + P → LLM embedder, chunked)",
          "baseline": "CLIP-style dual encoder (short captions, 77-token window)"}


def prepare_world(cfg: Config) -> tuple[Path, Path]:
    """The synthetic world (synthesised where missing) and its long texts; both seed-independent and resumable."""
    out = Path(cfg.run.output_dir)
    world = world_dir(cfg)
    if not (world / "world.json").exists():
        synthesize(cfg.world, world)
    long_texts = out / "mate" / "long_texts"
    mate = cfg.model.mate
    write_long_texts(world, long_texts, seed=cfg.world.seed, min_caption_tokens=mate.min_caption_tokens,
                     min_document_tokens=mate.min_document_tokens)
    return world, long_texts


def seed_config(cfg: Config, seed: int) -> Config:
    run = cfg.run.model_copy(update={"seed": seed, "name": f"{cfg.run.name}-seed{seed}"})
    return cfg.model_copy(update={"run": run}, deep=True)


def finished(path: Path) -> bool:
    return (path / MANIFEST).exists()


def train_stage(cfg: Config, task, datasets: dict, run_name: str, steps: int, parent_run_id: str,
                register: bool = False) -> str:
    """One stage through the shared loop, its MLflow run tagged as a child of the parent; returns the model dir."""
    out = Path(cfg.run.output_dir) / "mate" / "models" / run_name
    if finished(out):
        return str(out)
    stage_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps, "output": str(out)})},
                               deep=True)
    result = train(stage_cfg, task, datasets, run_name, register_name=run_name if register else "")
    # The loop opens the stage's run itself (one run per run_name, kept across resumes); the tag nests it in the UI.
    mlflow.MlflowClient().set_tag(result.mlflow_run_id, "mlflow.parentRunId", parent_run_id)
    return str(result.model_dir)


def train_vlm(cfg: Config, world: Path, parent_run_id: str) -> str:
    """The VLM and baseline: model.mate.vlm as given, else the tiny CLIP twin trained on the short captions."""
    import ray.data

    mate = cfg.model.mate
    if mate.vlm:
        return model_dir(mate.vlm, tracking_uri(cfg.run))
    vlm_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "family": "clip", "name_or_path": None, "max_text_tokens": mate.vlm_text_tokens})}, deep=True)
    datasets = {"train": ray.data.read_parquet(str(world / "train")), "val": ray.data.read_parquet(str(world / "val"))}
    task = EmbedderTask(vlm_cfg.model, vlm_cfg.train, vlm_cfg.eval, seed=cfg.run.seed)
    return train_stage(vlm_cfg, task, datasets, f"{cfg.run.name}-vlm", mate.vlm_steps, parent_run_id, register=True)


def init_model(cfg: Config, vlm_dir: str) -> str:
    """The untrained MATE model (VLM from vlm_dir, the LLM embedder, a random P of this seed), saved once."""
    out = Path(cfg.run.output_dir) / "mate" / "models" / f"{cfg.run.name}-init"
    if not finished(out):
        model_cfg = cfg.model.model_copy(update={"family": "mate", "name_or_path": None,
                                                 "mate": cfg.model.mate.model_copy(update={"vlm": vlm_dir})})
        build_embedder(model_cfg, seed=cfg.run.seed).save_pretrained(out)
    return str(out)


def llm_targets(cfg: Config, long_texts: Path, init_dir: str) -> Path:
    """The frozen LLM's vector of every text (`<text>_emb` columns) beside the long-text rows, per split, once.

    The LLM is frozen in every stage and identical in every seed's model (tests/mate check it bit for bit), so these
    vectors are also the trained models' text embeddings."""
    import ray.data

    out = long_texts.parent / "targets"
    for split in ("train", "val", "test"):
        done = out / split / "_SUCCESS"
        if done.exists():
            continue
        clear_partial_output(out / split)  # an interrupted write leaves part files: start the split over
        ds = ray.data.read_parquet(str(long_texts / split))
        ds = ds.map_batches(EmbedColumns, fn_constructor_kwargs=dict(model_path=init_dir, text_columns=TEXTS,
                                                                      batch_size=cfg.eval.batch_size),
                            batch_size=cfg.eval.batch_size, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
        ds.write_parquet(str(out / split))
        done.write_text("")
    return out


def train_mate(cfg: Config, targets: Path, init_dir: str, parent_run_id: str) -> str:
    """Stages 1a, 1b and 2 in order, each from the previous stage's export (a stage of 0 steps is skipped);
    returns the final model directory."""
    import ray.data

    mate = cfg.model.mate
    train, val = ray.data.read_parquet(str(targets / "train")), ray.data.read_parquet(str(targets / "val"))
    current = init_dir
    for stage, steps in (("captions", mate.stage1_caption_steps), ("documents", mate.stage1_document_steps),
                         ("images", mate.stage2_steps)):
        if steps == 0:  # a stage set to 0 steps is skipped (an ablation, or a VLM already aligned)
            continue
        data = train.limit(mate.stage2_pairs) if stage == "images" and mate.stage2_pairs else train
        task = MateTask(stage, current, mate, seed=cfg.run.seed, max_grad_norm=cfg.train.max_grad_norm,
                        eval_batch_size=cfg.eval.batch_size)
        current = train_stage(cfg, task, {"train": data, "val": val},
                              f"{cfg.run.name}-{stage}", steps, parent_run_id, register=stage == "images")
    return current


def long_text_metrics(cfg: Config, targets: Path, models: dict[str, str]) -> dict[str, dict[str, float]]:
    """Recall@1 both ways, image ⇄ {short caption, long caption, document}, per model, on the test split.

    MATE's text vectors are the precomputed LLM vectors (see `llm_targets`); the baseline embeds every text through
    its own text encoder, which truncates at its window. Each model's images and texts come from one table, so rows
    stay aligned whatever order Ray Data returns them in."""
    batch = cfg.eval.batch_size
    frames = {"mate": embed_table(targets / "test", models["mate"], batch, image_columns=("image",)),
              "baseline": embed_table(targets / "test", models["baseline"], batch, image_columns=("image",),
                                      text_columns=TEXTS)}
    out: dict[str, dict[str, float]] = {}
    for name, frame in frames.items():
        if (frame["image_error"] != "").any():
            raise ValueError(f"{targets / 'test'}: test images that do not decode (first id "
                             f"{frame['id'][frame['image_error'] != ''].iloc[0]}); validate the split first")
        images, ids = np.stack(frame["image_emb"]), np.arange(len(frame))
        out[name] = {}
        for text in TEXTS:
            r = retrieval_metrics(images, np.stack(frame[f"{text}_emb"]), ids, ks=(1,))
            out[name][f"i2t_{text}_r@1"], out[name][f"t2i_{text}_r@1"] = r["i2t_r@1"], r["t2i_r@1"]
        out[name]["n_test"] = float(len(frame))
    return out


def report_table(per_seed: dict[int, dict[str, dict[str, float]]], n_test: int) -> str:
    """Markdown: one row per model, one column per direction and text kind, mean ± std (population) over seeds."""
    seeds = sorted(per_seed)
    columns = [(f"{d}_{t}_r@1", f"{'image→' if d == 'i2t' else ''}{label}{'→image' if d == 't2i' else ''}")
               for t, label in (("caption", "short caption"), ("long_caption", "long caption"),
                                ("document", "document")) for d in ("i2t", "t2i")]
    lines = [f"Recall@1 on {n_test} test images (one text of each kind per image), mean ± std over seeds "
             f"{seeds}.", "", "| model | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, label in MODELS.items():
        cells = []
        for key, _ in columns:
            values = np.array([per_seed[s][name][key] for s in seeds])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parent_run_id(cfg: Config) -> str:
    """The job's parent MLflow run: the one a previous submission recorded under the output folder, else a new one.
    It is not held open while stages train (the loop opens each stage's run on the driver)."""
    state = Path(cfg.run.output_dir) / "mate" / "parent_run.json"
    if state.exists():
        return json.loads(state.read_text())["mlflow_run_id"]
    with mlflow_run(cfg.run, "mate", cfg, run_name=cfg.run.name) as run:
        run_id = run.info.run_id
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"mlflow_run_id": run_id}))
    return run_id


def run_mate(cfg: Config) -> dict:
    world, long_texts = prepare_world(cfg)
    out = Path(cfg.run.output_dir) / "mate"
    parent = parent_run_id(cfg)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    targets, models = None, {}
    for seed in cfg.model.mate.seeds:
        scfg = seed_config(cfg, seed)
        vlm_dir = train_vlm(scfg, world, parent)
        init_dir = init_model(scfg, vlm_dir)
        targets = targets or llm_targets(scfg, long_texts, init_dir)
        models[seed] = {"mate": train_mate(scfg, targets, init_dir, parent), "baseline": vlm_dir}
        per_seed[seed] = long_text_metrics(scfg, targets, models[seed])
    table = report_table(per_seed, int(per_seed[cfg.model.mate.seeds[0]]["mate"]["n_test"]))
    (out / "report.md").write_text("# MATE: image ⇄ long text retrieval\n\n" + table)
    (out / "metrics.json").write_text(json.dumps({str(s): m for s, m in per_seed.items()}, indent=1))
    with mlflow_run(cfg.run, "mate", run_id=parent):
        for seed, by_model in per_seed.items():
            for name, metrics in by_model.items():
                mlflow.log_metrics({metric_name(f"seed{seed}/{name}/{k}"): v for k, v in metrics.items()})
        mlflow.log_artifact(str(out / "report.md"))
    print(table, flush=True)
    return {"report": str(out / "report.md"), "per_seed": per_seed, "models": models, "parent_run_id": parent}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    return run_mate(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
