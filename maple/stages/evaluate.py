"""The evaluation pass: embed the test and compositional splits with one or several models in one Ray Data pass
(images decoded once, one actor pool), then compute every metric with the pure functions of `maple.eval`; with a
reranker, also retrieve-then-rerank (UniME-V2's two modes, `maple.eval.rerank`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray.data

from maple.data.images import decode_image
from maple.eval.config import EvalConfig
from maple.eval.report import compositional_report, retrieval_report, to_markdown
from maple.eval.rerank import compositional_rerank_report, rerank_report
from maple.models.batch_inference import EmbedColumns
from maple.models.config import RerankerConfig
from maple.stages.eval_rows import compositional_as_eval_rows, pairs_as_eval_rows


# eval.split -> (the pairs split of the retrieval metrics, the compositional split)
SPLITS = {"test": ("test", "compositional"), "val": ("val", "compositional_val")}


def embed_table(path: Path, model_path: str | dict[str, str], batch_size: int = 64, **columns):
    """Read a Parquet split with Ray Data, embed the given columns (`EmbedColumns` arguments) in an actor pool, and
    return a pandas frame without the image bytes."""
    return _embed(ray.data.read_parquet(str(path)), model_path, batch_size, **columns)


def _embed(ds, model_path: str | dict[str, str], batch_size: int, **columns) -> pd.DataFrame:
    ds = ds.map_batches(EmbedColumns, fn_constructor_kwargs=dict(model_path=model_path, **columns,
                                                                  batch_size=batch_size),
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    return ds.drop_columns(list(columns.get("image_columns", ()))).to_pandas()


def embed_splits(pairs: Path, compositional: Path | None, models: dict[str, str],
                 batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Embed a pairs split and, if given, a compositional split with every model in one Ray Data pass (one actor
    pool: its start-up, a process that imports torch and loads the models, is most of a small evaluation's time).

    Returns (pairs, compositional) frames in the columns `embed_table` gives each split alone, without the image
    bytes: pairs `id`, `captions`, `image_error`, `<model>/image_emb`, `<model>/captions_emb`; compositional `id`,
    `caption`, `negative_caption`, `negative_type`, `held_out` and the `_emb` of `image`, `negative_image`,
    `caption`, `negative_caption`.
    """
    ds = ray.data.read_parquet(str(pairs)).map_batches(pairs_as_eval_rows, batch_format="pyarrow")
    if compositional is not None:
        ds = ds.union(ray.data.read_parquet(str(compositional)).map_batches(compositional_as_eval_rows,
                                                                            batch_format="pyarrow"))
    frame = _embed(ds, models, batch_size, image_columns=("image", "negative_image"), text_list_columns=("texts",))
    test = frame[frame["split"] == "pairs"].reset_index(drop=True)
    test = test[["id", "texts", "image_error"] + [f"{m}/{c}" for m in models for c in ("image_emb", "texts_emb")]]
    test = test.rename(columns={"texts": "captions", **{f"{m}/texts_emb": f"{m}/captions_emb" for m in models}})
    if compositional is None:
        return test, None
    comp = frame[frame["split"] == "compositional"].reset_index(drop=True)
    out = comp[["id", "negative_type", "held_out"]].copy()
    out["caption"], out["negative_caption"] = [t[0] for t in comp["texts"]], [t[1] for t in comp["texts"]]
    for m in models:
        out[f"{m}/image_emb"], out[f"{m}/negative_image_emb"] = comp[f"{m}/image_emb"], comp[f"{m}/negative_image_emb"]
        out[f"{m}/caption_emb"] = [e[0] for e in comp[f"{m}/texts_emb"]]
        out[f"{m}/negative_caption_emb"] = [e[1] for e in comp[f"{m}/texts_emb"]]
    return test, out


def evaluate_many(evaluation: EvalConfig, world_dir: str | Path, models: dict[str, str],
                  out_root: Path | None = None, reranker: str | None = None,
                  reranker_cfg: RerankerConfig | None = None,
                  reranked: set[str] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate several embedders on the same splits in one Ray Data pass.

    models: name -> a saved embedder directory. world_dir: the folder with the `test` and `compositional` splits
    (`val` and `compositional_val` for eval.split=val); a folder without the compositional split (your own pairs,
    `maple data import`) gets the retrieval metrics only.
    With `out_root`, each model's `metrics.json`, `report.md` and `similarities.npz` (matched and unmatched test-set
    similarities, for histograms) are written to `<out_root>/<name>/`. With a `reranker` directory, each model's
    report also holds the retrieve-then-rerank metrics (`rerank_*`, UniME-V2's two modes; `reranker_cfg.pick_best_of`
    candidates for the "best_of" mode); `reranked` names the models it reranks for (default: every model).
    """
    world = Path(world_dir)
    reranker_cfg = reranker_cfg or RerankerConfig()
    pairs_split, comp_split = SPLITS[evaluation.split]
    # the compositional split is the synthetic world's; imported pairs have none
    test, comp = embed_splits(world / pairs_split, world / comp_split if (world / comp_split).exists() else None,
                              models, evaluation.batch_size)
    bad = test["image_error"] != ""
    if bad.any():
        raise ValueError(f"{world / pairs_split}: {int(bad.sum())} images do not decode (first id "
                         f"{test['id'][bad].iloc[0]}); validate the split first")
    results = {}
    for name in models:
        captions = list(test[f"{name}/captions_emb"])
        text_image_ids = [i for i, caps in zip(test["id"], captions) for _ in range(len(caps))]
        image_emb, text_emb = np.stack(test[f"{name}/image_emb"]), np.concatenate(captions)
        metrics = retrieval_report(list(test["id"]), image_emb, text_image_ids, text_emb, evaluation.recall_ks)
        if comp is not None:
            metrics.update(compositional_report(
                list(comp["negative_type"]), comp["held_out"].to_numpy(), np.stack(comp[f"{name}/image_emb"]),
                np.stack(comp[f"{name}/caption_emb"]), np.stack(comp[f"{name}/negative_caption_emb"]),
                np.stack(comp[f"{name}/negative_image_emb"])))
        if reranker and (reranked is None or name in reranked):
            view = lambda frame: frame.rename(columns={c: c.split("/", 1)[1] for c in frame.columns  # noqa: E731
                                                       if c.startswith(f"{name}/")})
            metrics.update(evaluate_with_reranker(reranker, world, view(test), None if comp is None else view(comp),
                                                  evaluation.recall_ks,
                                                  evaluation.rerank_top_k, reranker_cfg.pick_best_of, reranker_cfg,
                                                  splits=(pairs_split, comp_split)))
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


def evaluate_with_reranker(reranker_dir: str, world_dir: str | Path, test, comp, ks: list[int],
                           top_k_size: int = 10, m: int = 5, reranker_cfg: RerankerConfig | None = None,
                           splits: tuple[str, str] = SPLITS["test"]) -> dict[str, float]:
    """The reranked metrics (`maple.eval.rerank`), to merge with the embedder's own.

    reranker_dir: a saved reranker directory. world_dir: the folder with the `test` and `compositional` Parquet
    splits. test, comp: the frames `embed_table` returned for them (ids in split order, with `image_emb`,
    `captions_emb` / `caption_emb`; comp None: no compositional split); the images are read again here from the
    Parquet by id, since those frames drop the bytes. reranker_cfg: the `reranker` config section, used where the
    directory is a plain checkpoint.
    """
    from maple.models.families import load_reranker  # torch and transformers, only when a reranker is evaluated

    reranker = load_reranker(reranker_dir, reranker_cfg)
    world_dir = Path(world_dir)

    def images_by_id(split: str, column: str) -> dict[str, object]:
        table = pq.read_table(world_dir / split, columns=["id", column]).to_pydict()
        return {i: (decode_image(b) if b is not None else None) for i, b in zip(table["id"], table[column])}

    test_images = images_by_id(splits[0], "image")
    ids = list(test["id"])
    captions = [c for caps in test["captions"] for c in caps]
    text_to_image = np.array([n for n, caps in enumerate(test["captions"]) for _ in caps])
    out = rerank_report(reranker.score, [test_images[i] for i in ids], np.stack(test["image_emb"]), captions,
                        text_to_image, np.concatenate([np.stack(list(e)) for e in test["captions_emb"]]), ks,
                        top_k_size, m)
    if comp is None:
        return out
    comp_images, comp_negatives = images_by_id(splits[1], "image"), images_by_id(splits[1], "negative_image")
    cids = list(comp["id"])
    out.update(compositional_rerank_report(
        reranker.score, [comp_images[i] for i in cids], list(comp["caption"]), list(comp["negative_caption"]),
        [comp_negatives[i] for i in cids], list(comp["negative_type"]), comp["held_out"].to_numpy()))
    return out
