"""Evaluate an embedder: recall@K both ways, compositional accuracy per negative type, modality gap.

`python -m jobs.evaluate --config configs/demo.yaml eval.model=runs/demo/models/full` (a directory or an MLflow
`models:/name/version`; none: the untrained tiny twin of `model.family`). Embeddings are computed by a Ray Data actor
pool; the metrics are pure functions (`maple.eval`). Writes `metrics.json` and `report.md`; logs to MLflow.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import numpy as np

from jobs.common import init_ray, parse_config
from maple.config import Config
from maple.eval.report import compositional_report, retrieval_report, to_markdown
from maple.models.embedder import build_embedder
from maple.tracking import mlflow_run, model_dir


def resolve_model(cfg: Config, spec: str | None) -> str:
    """A local embedder directory: the spec itself, a registry download, or the untrained tiny twin saved once."""
    if spec:
        return model_dir(spec, cfg)
    path = Path(cfg.run.output_dir) / "models" / f"untrained-{cfg.model.family}-seed{cfg.run.seed}"
    if not (path / "maple_embedder.json").exists():
        build_embedder(cfg.model, seed=cfg.run.seed).save_pretrained(path)
    return str(path)


def embed_table(path: Path, model_path: str | dict[str, str], cfg: Config, **columns):
    """Read a Parquet split with Ray Data, embed the given columns (`EmbedColumns` arguments) in an actor pool, and
    return a pandas frame without the image bytes."""
    import ray.data

    from maple.models.batch_inference import EmbedColumns

    ds = ray.data.read_parquet(str(path))
    ds = ds.map_batches(EmbedColumns, fn_constructor_kwargs=dict(model_path=model_path, **columns,
                                                                  batch_size=cfg.eval.batch_size),
                        batch_size=cfg.eval.batch_size, concurrency=1, num_cpus=1)
    return ds.drop_columns(list(columns.get("image_columns", ()))).to_pandas()


def evaluate_many(cfg: Config, specs: dict[str, str | None], out_root: Path | None = None,
                  reranker: str | None = None) -> dict[str, dict[str, float]]:
    """Evaluate several embedders on the same splits in one Ray Data pass (images decoded once, one actor pool).

    specs: name -> model spec (directory, `models:/name/version`, or None for the untrained tiny twin). With
    `out_root`, each model's `metrics.json`, `report.md` and `similarities.npz` (matched and unmatched test-set
    similarities, for histograms) are written to `<out_root>/<name>/`. With a `reranker` (default `eval.reranker`),
    each model's report also holds the retrieve-then-rerank metrics (`rerank_*`, UniME-V2's two modes).
    """
    reranker = reranker or cfg.eval.reranker
    world = Path(cfg.eval.split_dir or Path(cfg.run.output_dir) / "world")
    paths = {name: resolve_model(cfg, spec) for name, spec in specs.items()}
    test = embed_table(world / "test", paths, cfg, image_columns=("image",), text_list_columns=("captions",))
    bad = test["image_error"] != ""
    if bad.any():
        raise ValueError(f"{world / 'test'}: {int(bad.sum())} test images do not decode (first id "
                         f"{test['id'][bad].iloc[0]}); validate the split first")
    comp = embed_table(world / "compositional", paths, cfg, image_columns=("image", "negative_image"),
                       text_columns=("caption", "negative_caption"))
    results = {}
    for name in paths:
        captions = list(test[f"{name}/captions_emb"])
        text_image_ids = [i for i, caps in zip(test["id"], captions) for _ in range(len(caps))]
        image_emb, text_emb = np.stack(test[f"{name}/image_emb"]), np.concatenate(captions)
        metrics = retrieval_report(list(test["id"]), image_emb, text_image_ids, text_emb, cfg.eval.recall_ks)
        metrics.update(compositional_report(
            list(comp["negative_type"]), comp["held_out"].to_numpy(), np.stack(comp[f"{name}/image_emb"]),
            np.stack(comp[f"{name}/caption_emb"]), np.stack(comp[f"{name}/negative_caption_emb"]),
            np.stack(comp[f"{name}/negative_image_emb"])))
        if reranker:
            from maple.rerank.retrieve_then_rerank import evaluate_with_reranker

            view = lambda frame: frame.rename(columns={c: c.split("/", 1)[1] for c in frame.columns  # noqa: E731
                                                       if c.startswith(f"{name}/")})
            metrics.update(evaluate_with_reranker(reranker, world, view(test), view(comp), cfg.eval.recall_ks,
                                                  cfg.eval.rerank_top_k, cfg.reranker.pick_best_of, cfg.reranker))
        results[name] = metrics
        if out_root is not None:
            out = Path(out_root) / name
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
            (out / "report.md").write_text(to_markdown(metrics, f"Evaluation: {name}"))
            sim = text_emb @ image_emb.T
            index = {i: n for n, i in enumerate(test["id"])}
            matched = np.zeros(sim.shape, bool)
            matched[np.arange(len(text_image_ids)), [index[i] for i in text_image_ids]] = True
            np.savez_compressed(out / "similarities.npz", matched=sim[matched], unmatched=sim[~matched])
    return results


def evaluate(cfg: Config, model_spec: str | None, name: str, out_root: Path | None = None) -> dict[str, float]:
    """Embed the test and compositional splits with one model and compute every metric."""
    return evaluate_many(cfg, {name: model_spec}, out_root)[name]


def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg)
    name = Path(cfg.eval.model).name if cfg.eval.model else "untrained"
    out = Path(cfg.run.output_dir) / "eval" / name
    with mlflow_run(cfg, "evaluate", run_name=f"{cfg.run.name}-eval-{name}"):
        metrics = evaluate(cfg, cfg.eval.model, name, out.parent)
        log_metrics(metrics)
        mlflow.log_artifacts(str(out), "eval")
    print(json.dumps({"report": str(out / "report.md"), "t2i_r@1": metrics.get("t2i_r@1"),
                      "i2t_r@1": metrics.get("i2t_r@1"), "comp_all_accuracy": metrics.get("comp_all_accuracy")}))
    return metrics


def log_metrics(metrics: dict[str, float], prefix: str = "") -> None:
    """Log finite metrics; MLflow names allow letters, digits and `_-. :/` only ("t2i_r@1" -> "t2i_r_at_1")."""
    name = lambda key: re.sub(r"[^\w\-. :/]", "_", (prefix + key).replace("@", "_at_"))  # noqa: E731
    mlflow.log_metrics({name(k): v for k, v in metrics.items() if np.isfinite(v)})


if __name__ == "__main__":
    main(sys.argv[1:])
