"""Evaluate an embedder: recall@K both ways, compositional accuracy per negative type, modality gap.

`python -m jobs.evaluate --config configs/demo.yaml eval.model=runs/demo/models/full` (a directory or an MLflow
`models:/name/version`; none: the untrained tiny twin of `model.family`). Embeddings are computed by a Ray Data actor
pool; the metrics are pure functions (`maple.eval`). Writes `metrics.json` and `report.md`; logs to MLflow.
"""

from __future__ import annotations

import json
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


def embed_table(path: Path, model_path: str, cfg: Config, **columns):
    """Read a Parquet split with Ray Data, embed the given columns (`EmbedColumns` arguments) in an actor pool, and
    return a pandas frame without the image bytes."""
    import ray.data

    from maple.models.batch_inference import EmbedColumns

    ds = ray.data.read_parquet(str(path))
    ds = ds.map_batches(EmbedColumns, fn_constructor_kwargs=dict(model_path=model_path, **columns,
                                                                  batch_size=cfg.eval.batch_size),
                        batch_size=cfg.eval.batch_size, concurrency=1, num_cpus=1)
    return ds.drop_columns(list(columns.get("image_columns", ()))).to_pandas()


def evaluate(cfg: Config, model_spec: str | None, name: str) -> dict[str, float]:
    """Embed the test and compositional splits with the model and compute every metric."""
    world = Path(cfg.eval.split_dir or Path(cfg.run.output_dir) / "world")
    model_path = resolve_model(cfg, model_spec)
    test = embed_table(world / "test", model_path, cfg, image_columns=("image",), text_list_columns=("captions",))
    bad = test["image_error"] != ""
    if bad.any():
        raise ValueError(f"{world / 'test'}: {int(bad.sum())} test images do not decode (first id "
                         f"{test['id'][bad].iloc[0]}); validate the split first")
    text_image_ids = [i for i, caps in zip(test["id"], test["captions_emb"]) for _ in range(len(caps))]
    metrics = retrieval_report(list(test["id"]), np.stack(test["image_emb"]), text_image_ids,
                               np.concatenate(list(test["captions_emb"])), cfg.eval.recall_ks)
    comp = embed_table(world / "compositional", model_path, cfg, image_columns=("image", "negative_image"),
                       text_columns=("caption", "negative_caption"))
    metrics.update(compositional_report(
        list(comp["negative_type"]), comp["held_out"].to_numpy(), np.stack(comp["image_emb"]),
        np.stack(comp["caption_emb"]), np.stack(comp["negative_caption_emb"]), np.stack(comp["negative_image_emb"])))
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg)
    name = Path(cfg.eval.model).name if cfg.eval.model else "untrained"
    out = Path(cfg.run.output_dir) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_run(cfg, "evaluate", run_name=f"{cfg.run.name}-eval-{name}"):
        metrics = evaluate(cfg, cfg.eval.model, name)
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (out / "report.md").write_text(to_markdown(metrics, f"Evaluation: {name}"))
        mlflow.log_artifacts(str(out), "eval")
    print(json.dumps({"report": str(out / "report.md"), "t2i_r@1": metrics.get("t2i_r@1"),
                      "i2t_r@1": metrics.get("i2t_r@1"), "comp_all_accuracy": metrics.get("comp_all_accuracy")}))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
