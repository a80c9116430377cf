"""Mine hard negatives with an LLM judge: Ray Data streams pairs → embed (actor pool, current embedder) → global
top-K retrieval (faiss) in each direction → judge every (query, candidate) and (query, positive) pair → UniME-V2
mining → Parquet shards named by input shard (JUDGED_SCHEMA), quarantine beside them, summary.json, one MLflow run.

`python -m jobs.mine --config configs/mine.yaml [section.key=value ...]` (`maple mine`); on a cluster
`ray job submit --working-dir . -- python -m jobs.mine --config ...`. A re-run skips the shards already written
(`<out>/judged/<shard>.parquet`). The judge backends and their settings: docs/judge.md.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.common import init_ray, parse_config
from maple.config import Config

log = logging.getLogger("maple.mine")


def input_shards(path: str | Path) -> list[str]:
    folder = Path(path)
    files = sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else [str(folder)]
    if not files or not all(Path(f).is_file() for f in files):
        raise FileNotFoundError(f"mine.input={path}: no Parquet shards of image-text pairs there")
    return files


def read_validated(files: list[str], cfg: Config):
    """Raw pairs of the shards, validated: (good rows in PAIRS_SCHEMA with `source` = the shard file, quarantine).
    `source` is the file because output and resume go by input shard."""
    from maple.data import readers

    raw = readers.read_parquet_pairs(files, source_from_path=True)
    return readers.validated(raw, cfg.data, stage="mine:validate")


def embed_pairs(good, model_path: str, cfg: Config) -> dict:
    """Embed every good pair's image and captions in an actor pool; collect ids, embeddings and content on the
    driver (candidates are global: every shard's, even finished ones, are needed)."""
    from maple.stages.mining import CONTENT_SCHEMA, EmbedPairs, shard_name

    embedded = good.map_batches(
        EmbedPairs, fn_constructor_kwargs=dict(model_path=model_path, batch_size=cfg.mine.embed_batch_size),
        batch_size=cfg.mine.embed_batch_size, concurrency=cfg.mine.embed_concurrency, num_cpus=1,
        max_restarts=cfg.mine.max_actor_restarts, max_task_retries=cfg.mine.max_actor_restarts)
    ids, shards, image_emb, caption_embs, content, failed = [], [], [], [], [], []
    for batch in embedded.iter_batches(batch_size=cfg.mine.embed_batch_size, batch_format="pyarrow"):
        for row in batch.to_pylist():
            pid, shard = row["id"], shard_name(row["source"])
            if row["image_error"]:
                failed.append({"id": pid, "source": shard, "stage": "mine:embed",
                               "reason": f"image:{row['image_error']}", "row": json.dumps({"id": pid})})
                continue
            ids.append(pid)
            shards.append(shard)
            image_emb.append(np.asarray(row["image_emb"], np.float32))
            caption_embs.append(np.asarray(row["captions_emb"], np.float32))
            content.append({k: row[k] for k in ("id", "image", "captions", "annotation")})
    dim = image_emb[0].shape[-1] if image_emb else 0
    return {"ids": ids, "shards": shards, "image_emb": np.asarray(image_emb, np.float32).reshape(len(ids), dim),
            "caption_embs": caption_embs, "content": pa.Table.from_pylist(content, schema=CONTENT_SCHEMA),
            "failed": failed}


def build_indexes(emb: dict, cfg: Config, out: Path) -> dict:
    """One index per direction over that direction's candidates (images for t2i, captions for i2t), saved under
    `<out>/index/<direction>` for reuse."""
    from maple.stages.mining import caption_id
    from maple.retrieval.index import build_index

    indexes = {}
    for direction in cfg.mine.directions:
        if direction == "t2i":
            vectors, ids = emb["image_emb"], emb["ids"]
        else:
            vectors = np.concatenate(emb["caption_embs"]) if emb["caption_embs"] else np.zeros((0, 0), np.float32)
            ids = [caption_id(p, j) for p, caps in zip(emb["ids"], emb["caption_embs"]) for j in range(len(caps))]
        index = build_index(vectors, cfg.mine.index, ids=ids, exact_max=cfg.mine.exact_max_candidates,
                            seed=cfg.run.seed)
        index.save(out / "index" / direction)
        indexes[direction] = index
    return indexes


def score_histogram_png(scores: np.ndarray, path: Path, bins: int = 20) -> list[int]:
    """A bar chart of the judge scores (PIL: no plotting library needed); returns the bin counts."""
    from PIL import Image, ImageDraw

    counts, _ = np.histogram(scores[np.isfinite(scores)], bins=bins, range=(0.0, 1.0))
    width, height, pad = 640, 360, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    top = max(int(counts.max()), 1)
    bar = (width - 2 * pad) / bins
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        draw.rectangle([pad + i * bar + 1, height - pad - h, pad + (i + 1) * bar - 1, height - pad],
                       fill=(60, 110, 200))
    draw.line([pad, height - pad, width - pad, height - pad], fill="black")
    draw.text((pad, 10), f"judge P(Yes), {int(counts.sum())} pairs, max bin {top}", fill="black")
    draw.text((pad, height - pad + 8), "0", fill="black")
    draw.text((width - pad - 8, height - pad + 8), "1", fill="black")
    img.save(path)
    return counts.tolist()


def output_counts(out: Path) -> dict:
    """Counts over every shard in the output folder (this run's and earlier runs')."""
    from maple.data.quarantine import quarantine_counts

    counts: Counter = Counter()
    for path in sorted((out / "judged").glob("*.parquet")):
        t = pq.read_table(path, columns=["direction", "num_false_negatives", "repeated", "fallback",
                                         "judge_missing", "positive_score"])
        counts["judged_rows"] += t.num_rows
        for d in t["direction"].to_pylist():
            counts[f"judged_rows_{d}"] += 1
        counts["false_negatives"] += int(np.sum(t["num_false_negatives"].to_numpy()))
        counts["repeated_rows"] += int(np.sum(t["repeated"].to_numpy()))
        counts["fallback_rows"] += int(np.sum(t["fallback"].to_numpy()))
        counts["judge_missing_candidates"] += int(np.sum(t["judge_missing"].to_numpy()))
        counts["judge_missing_positives"] += t["positive_score"].null_count
    quarantine = quarantine_counts(out)
    counts["quarantined_rows"] = sum(quarantine.values())
    return {"counts": dict(counts), "quarantine_reasons": quarantine}


def mine(cfg: Config) -> dict:
    """The job body. Returns the summary written to `<out>/summary.json`."""
    import mlflow
    import ray

    from jobs.evaluate import resolve_model
    from maple.judge.base import check_judge
    from maple.stages.mining import (
        CHAOS_ENV,
        JudgeQueries,
        ShardWriter,
        finished_shards,
        index_payload,
        mine_queries,
        query_rows,
        retrieve_candidates,
        shard_name,
    )
    from maple.tracking import mlflow_run

    init_ray(cfg)  # no-op when the caller (main, the demo, a test) has Ray up already
    out = Path(cfg.mine.output or Path(cfg.run.output_dir) / "mined")
    files = input_shards(cfg.mine.input or Path(cfg.run.output_dir) / "world" / "train")
    # Fail fast: judge model, its Yes/No tokens, GPUs, before reading any data.
    judge_facts = check_judge(cfg.judge, needs_images=True, available_gpus=ray.cluster_resources().get("GPU", 0.0))
    shards = [shard_name(f) for f in files]
    done = finished_shards(out, shards)
    todo = [s for s in shards if s not in done]
    log.info("mining %d shards (%d already finished) into %s", len(todo), len(done), out)
    timings: dict[str, float] = {}

    with mlflow_run(cfg, "mine"):
        mlflow.log_params({f"judge_facts.{k}": v for k, v in judge_facts.items()})
        t0 = time.perf_counter()
        good, bad = read_validated(files, cfg)
        emb = embed_pairs(good, resolve_model(cfg, cfg.mine.model), cfg)
        timings["embed_s"] = time.perf_counter() - t0
        n_pairs = len(emb["ids"])
        quarantine: dict[str, list[dict]] = defaultdict(list)
        for row in [*bad.take_all(), *emb["failed"]]:
            row["source"] = shard_name(row["source"]) if row.get("source") else None
            quarantine[row["source"]].append(row)
        t0 = time.perf_counter()
        indexes = build_indexes(emb, cfg, out) if n_pairs else {}
        timings["index_s"] = time.perf_counter() - t0

        keep = [i for i, s in enumerate(emb["shards"]) if s in todo]
        queries = query_rows([emb["ids"][i] for i in keep], emb["image_emb"][keep],
                             [emb["caption_embs"][i] for i in keep], [emb["shards"][i] for i in keep],
                             cfg.mine.directions)
        expected = Counter(queries["shard"].to_pylist())
        writer = ShardWriter(out, {s: expected.get(s, 0) for s in todo}, {s: quarantine.get(s, []) for s in todo})
        t0 = time.perf_counter()
        if queries.num_rows:
            store = ray.put(emb["content"])
            payload = ray.put({d: index_payload(ix) for d, ix in indexes.items()})
            per_batch = cfg.mine.queries_per_batch
            ds = ray.data.from_arrow([queries.slice(i, per_batch) for i in range(0, queries.num_rows, per_batch)])
            ds = ds.map_batches(retrieve_candidates, batch_format="pyarrow", batch_size=per_batch,
                                fn_kwargs={"indexes": payload, "top_k": cfg.mine.top_k}, num_cpus=0.5)
            ds = ds.map_batches(
                JudgeQueries, batch_format="pyarrow", batch_size=per_batch,
                fn_constructor_kwargs={"judge": cfg.judge.model_dump(), "store": store,
                                       "kill_marker": os.environ.get(CHAOS_ENV)},
                concurrency=cfg.judge.num_actors, num_cpus=cfg.judge.cpus_per_actor,
                num_gpus=cfg.judge.gpus_per_actor or None,
                max_restarts=cfg.mine.max_actor_restarts, max_task_retries=cfg.mine.max_actor_restarts)
            ds = ds.map_batches(mine_queries, batch_format="pyarrow", batch_size=per_batch, num_cpus=0.5,
                                fn_kwargs={"store": store, "k": cfg.mine.num_hard_negatives, "beta": cfg.mine.beta,
                                           "step": cfg.mine.cyclical_step, "seed": cfg.run.seed})
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                writer.add(batch)
        writer.close()
        timings["stream_s"] = time.perf_counter() - t0

        summary = output_counts(out)
        n_judge_pairs = writer.totals["_judge_pairs"]
        summary.update({
            "output": str(out), "input_shards": len(shards), "shards_this_run": todo, "shards_skipped": sorted(done),
            "pairs_embedded": n_pairs, "queries_this_run": queries.num_rows, "judge_pairs_this_run": int(n_judge_pairs),
            "judge": judge_facts, "timings_s": timings,
            "throughput": {
                "embed_pairs_per_s": n_pairs / timings["embed_s"] if timings["embed_s"] else 0.0,
                "retrieve_queries_per_s": _rate(queries.num_rows, writer.totals["_retrieve_s"]),
                "judge_pairs_per_s": _rate(n_judge_pairs, writer.totals["_judge_s"]),
                "judge_pairs_per_s_wall": _rate(n_judge_pairs, timings["stream_s"]),
                "mine_rows_per_s": _rate(queries.num_rows, writer.totals["_mine_s"]),
            },
        })
        scores = writer.score_values()
        summary["score_histogram"] = score_histogram_png(scores, out / "score_histogram.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        mlflow.log_metrics({**{k: float(v) for k, v in summary["counts"].items()},
                            **{k: float(v) for k, v in summary["throughput"].items()},
                            "pairs_embedded": n_pairs, "queries_this_run": queries.num_rows})
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(out / "score_histogram.png"))
        mlflow.log_param("mine.output_path", str(out))
    return summary


def _rate(count: float, seconds: float) -> float:
    return float(count) / seconds if seconds > 0 else 0.0


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg)
    summary = mine(cfg)
    print(json.dumps({k: summary[k] for k in ("output", "counts", "throughput")}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
