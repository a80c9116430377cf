"""The mining pipeline (ARCHITECTURE.md: pairs → embed → retrieve → judge → mine) as Ray Data stages.

Ray Data streams the pairs → embed (actor pool, current embedder) → global top-K retrieval (faiss) in each direction
→ rewrites of each image's paired caption join its candidates (`maple.rewrite`, when rewrite.backend is set) → judge
every (query, candidate) and (query, positive) pair (`maple.judge`, an actor pool) → UniME-V2 mining and MAPLE's
preference ranking (`maple.mining.rules`) → Parquet shards named by input shard (JUDGED_SCHEMA), quarantine beside
them (`maple.stages.shards`). The steps themselves are in `maple.stages.mine_steps`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import ray.data

from maple.data.config import DataConfig, WorldConfig
from maple.data.images import image_files
from maple.data.parquet_pairs import check_columns
from maple.data.schema import CONTENT_SCHEMA
from maple.eval.plots import plot_score_histogram
from maple.judge.backends import check_judge
from maple.judge.config import JudgeConfig
from maple.mining.config import MineConfig
from maple.retrieval.index import VectorIndex, build_index
from maple.rewrite.config import RewriteConfig
from maple.section import RunConfig, SetupError
from maple.stages.capacity import check_accelerator, data_capacity
from maple.stages.mine_steps import (
    EmbedPairs,
    JudgeQueries,
    ProposeRewrites,
    caption_id,
    index_payload,
    mine_queries,
    propose_rewrites,
    query_rows,
    retrieve_candidates,
)
from maple.stages.read import read_parquet_pairs, validated
from maple.stages.shards import SHARD, ShardWriter, finished_shards, output_counts, shard_name

log = logging.getLogger(__name__)

# A task sent to an actor that dies (its process, or its whole node) is retried until the actor is back, bounded by
# mine.max_actor_restarts. A finite count is not enough: while a restarted actor runs its constructor (a model load)
# Ray fails the queued tasks fast and counts each try, so 3 retries were spent in under a second and a judge that
# lost its node failed the job (tests/cluster/test_node_loss.py). Only system failures are retried, never exceptions.
ACTOR_TASK_RETRIES = -1


def input_shards(path: str | Path) -> list[str]:
    """The Parquet shards of `mine.input` (a folder of them, or one file); SetupError naming the fix when there are
    none, e.g. a folder of image files (mining reads pairs from shards)."""
    folder = Path(path)
    if not folder.exists():
        raise SetupError(f"mine.input={path} does not exist; point it at a folder of Parquet shards of image-text "
                         "pairs (`maple data synth` writes one)")
    files = sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else [str(folder)]
    if not files:
        images = image_files(folder)
        found = f"{len(images)}{'+' if len(images) == 1000 else ''} image files but " if images else ""
        raise SetupError(f"mine.input={path} holds {found}no Parquet shards; mining reads image-text pairs from "
                         "Parquet shards (columns id, image bytes, captions: maple.data.schema.PAIRS_SCHEMA), so "
                         "write the images and their captions into shards and point mine.input at their folder")
    return files


def embed_pairs(good: ray.data.Dataset, model_path: str, mine: MineConfig) -> dict:
    """Embed every good pair's image and captions in an actor pool; collect ids, embeddings and content on the
    driver (candidates are global: every shard's, even finished ones, are needed)."""
    embedded = good.map_batches(
        EmbedPairs, fn_constructor_kwargs={"model_path": model_path, "batch_size": mine.embed_batch_size},
        batch_size=mine.embed_batch_size, compute=ray.data.ActorPoolStrategy(size=mine.embed_concurrency), num_cpus=1,
        max_restarts=mine.max_actor_restarts, max_task_retries=ACTOR_TASK_RETRIES)
    ids, shards, image_emb, caption_embs, content, failed = [], [], [], [], [], []
    for batch in embedded.iter_batches(batch_size=mine.embed_batch_size, batch_format="pyarrow"):
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


def build_indexes(emb: dict, mine: MineConfig, out: Path, seed: int) -> dict[str, VectorIndex]:
    """One index per direction over that direction's candidates (images for t2i, captions for i2t), saved under
    `<out>/index/<direction>` for reuse."""
    indexes = {}
    for direction in mine.directions:
        if direction == "t2i":
            vectors, ids = emb["image_emb"], emb["ids"]
        else:
            vectors = np.concatenate(emb["caption_embs"]) if emb["caption_embs"] else np.zeros((0, 0), np.float32)
            ids = [caption_id(p, j) for p, caps in zip(emb["ids"], emb["caption_embs"]) for j in range(len(caps))]
        index = build_index(vectors, mine.index, ids=ids, exact_max=mine.exact_max_candidates, seed=seed)
        index.save(out / "index" / direction)
        indexes[direction] = index
    return indexes


def check_cpus(judge: JudgeConfig, rewrite: RewriteConfig, available: float) -> None:
    """The judge's (and an LLM rewriter's) actors hold their CPUs for the whole stream; the retrieval and mining
    tasks need half a CPU beside them. Refuse a plan that cannot be placed (it would wait forever) and say which keys
    change it."""
    actors = judge.num_actors * judge.cpus_per_actor
    if rewrite.backend in ("hf", "vllm"):
        actors += rewrite.num_actors * rewrite.cpus_per_actor
    if actors + 0.5 > available:
        raise ValueError(
            f"the mining stream's actors ask {actors:g} CPUs (judge.num_actors × judge.cpus_per_actor"
            f"{' + rewrite.num_actors × rewrite.cpus_per_actor' if rewrite.backend in ('hf', 'vllm') else ''}) and "
            f"its tasks 0.5 more, but Ray Data may use {available:g} (the Ray cluster's CPUs, within "
            f"run.data_max_cpus); lower those keys, raise run.data_max_cpus or join a larger cluster")


def mine_pairs(mine: MineConfig, judge: JudgeConfig, data: DataConfig, run: RunConfig, model_path: str,
               rewrite: RewriteConfig | None = None, world: WorldConfig | None = None,
               judge_class: type = JudgeQueries, on_rows: Callable[[int, int], None] | None = None) -> dict:
    """The mining pipeline: read and validate the pairs of `mine.input`, embed them with the model at `model_path`,
    retrieve each query's top-K in its direction, add the rewrites of each image's caption (`rewrite`; the grammar
    backend reads the world's vocabulary from `world`), judge every (query, candidate) and (query, positive) pair,
    mine, and write `<mine.output>/judged/<shard>.parquet` (+ quarantine, the index, `summary.json` and
    `score_histogram.png`). Shards finished by an earlier run are skipped. `judge_class` is the judge step's
    callable class (`JudgeQueries`, or a subclass: the fault-injection test kills one mid-run). `on_rows(n, total)`
    hears of each batch of n queries mined, of `total` (the job's progress display). Returns the summary (counts,
    throughput, the judge's start-up facts, the paths written)."""
    out = Path(mine.output or Path(run.output_dir) / "mined")
    source = mine.input or Path(run.output_dir) / "world" / "train"
    files = input_shards(source)
    # Fail fast: the shards' columns, judge model, its Yes/No tokens, GPUs, CPUs, before reading any data.
    check_columns(files, f"mine.input={source}")
    capacity = data_capacity()  # the judge's actors are a Ray Data pool: within its cap
    judge_facts = check_judge(judge, needs_images=True, available_gpus=capacity.get("GPU", 0.0))
    check_cpus(judge, rewrite or RewriteConfig(), capacity.get("CPU", 0.0))
    check_accelerator(judge.accelerator_type, "judge.accelerator_type", capacity)
    shards = [shard_name(f) for f in files]
    done = finished_shards(out, shards)
    todo = [s for s in shards if s not in done]
    log.info("mining %d shards (%d already finished) into %s", len(todo), len(done), out)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    # `source` = the shard file, whatever the input says: output and resume go by input shard
    good, bad = validated(read_parquet_pairs(files, source_from_path=True), data, stage="mine:validate")
    emb = embed_pairs(good, model_path, mine)
    timings["embed_s"] = time.perf_counter() - t0
    n_pairs = len(emb["ids"])
    quarantine: dict[str, list[dict]] = defaultdict(list)
    for row in [*bad.take_all(), *emb["failed"]]:
        row["source"] = shard_name(row["source"]) if row.get("source") else None
        quarantine[row["source"]].append(row)
    t0 = time.perf_counter()
    indexes = build_indexes(emb, mine, out, run.seed) if n_pairs else {}
    timings["index_s"] = time.perf_counter() - t0

    keep = [i for i, s in enumerate(emb["shards"]) if s in todo]
    queries = query_rows([emb["ids"][i] for i in keep], emb["image_emb"][keep],
                         [emb["caption_embs"][i] for i in keep], [emb["shards"][i] for i in keep], mine.directions)
    expected = Counter(queries[SHARD].to_pylist())
    writer = ShardWriter(out, {s: expected.get(s, 0) for s in todo}, {s: quarantine.get(s, []) for s in todo})
    t0 = time.perf_counter()
    if queries.num_rows:
        store = ray.put(emb["content"])
        payload = ray.put({d: index_payload(ix) for d, ix in indexes.items()})
        per_batch = mine.queries_per_batch
        ds = ray.data.from_arrow([queries.slice(i, per_batch) for i in range(0, queries.num_rows, per_batch)])
        ds = ds.map_batches(retrieve_candidates, batch_format="pyarrow", batch_size=per_batch, num_cpus=0.5,
                            fn_kwargs={"indexes": payload, "top_k": mine.top_k, "min_similarity": mine.min_similarity})
        rewrite = rewrite or RewriteConfig()
        rewriting = {"rewrite": rewrite.model_dump(), "world": (world or WorldConfig()).model_dump(), "store": store}
        if rewrite.backend == "grammar" and "i2t" in mine.directions:  # cheap and model-free: a task, no actor
            ds = ds.map_batches(propose_rewrites, batch_format="pyarrow", batch_size=per_batch, num_cpus=0.25,
                                fn_kwargs=rewriting)
        elif rewrite.backend != "none" and "i2t" in mine.directions:  # an LLM: one model per actor
            ds = ds.map_batches(
                ProposeRewrites, batch_format="pyarrow", batch_size=per_batch, fn_constructor_kwargs=rewriting,
                compute=ray.data.ActorPoolStrategy(size=rewrite.num_actors), num_cpus=rewrite.cpus_per_actor,
                num_gpus=rewrite.gpus_per_actor or None,
                max_restarts=mine.max_actor_restarts, max_task_retries=ACTOR_TASK_RETRIES)
        ds = ds.map_batches(
            judge_class, batch_format="pyarrow", batch_size=per_batch,
            fn_constructor_kwargs={"judge": judge.model_dump(), "store": store},
            compute=ray.data.ActorPoolStrategy(size=judge.num_actors), num_cpus=judge.cpus_per_actor,
            num_gpus=judge.gpus_per_actor or None,
            accelerator_type=judge.accelerator_type, max_restarts=mine.max_actor_restarts,
            max_task_retries=ACTOR_TASK_RETRIES)
        ds = ds.map_batches(mine_queries, batch_format="pyarrow", batch_size=per_batch, num_cpus=0.5,
                            fn_kwargs={"store": store, "k": mine.num_hard_negatives, "beta": mine.beta,
                                       "step": mine.cyclical_step, "seed": run.seed,
                                       "fallback_score": mine.fallback_score, "ranking_max": mine.ranking_max})
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
            if on_rows is not None:
                on_rows(batch.num_rows, queries.num_rows)
    writer.close()
    timings["stream_s"] = time.perf_counter() - t0

    summary = output_counts(out)
    n_judge_pairs = writer.totals["_judge_pairs"]
    summary.update({
        "output": str(out), "input_shards": len(shards), "shards_this_run": todo, "shards_skipped": sorted(done),
        "pairs_embedded": n_pairs, "queries_this_run": queries.num_rows, "judge_pairs_this_run": int(n_judge_pairs),
        "judge": judge_facts, "timings_s": timings,
        "throughput": {
            "embed_pairs_per_s": _rate(n_pairs, timings["embed_s"]),
            "retrieve_queries_per_s": _rate(queries.num_rows, writer.totals["_retrieve_s"]),
            "judge_pairs_per_s": _rate(n_judge_pairs, writer.totals["_judge_s"]),
            "judge_pairs_per_s_wall": _rate(n_judge_pairs, timings["stream_s"]),
            "mine_rows_per_s": _rate(queries.num_rows, writer.totals["_mine_s"]),
        },
        "summary_path": str(out / "summary.json"), "histogram_path": str(out / "score_histogram.png"),
    })
    summary["score_histogram"] = plot_score_histogram(
        {source: writer.score_values(source) for source in ("positive", "retrieved", "rewritten")},
        out / "score_histogram.png")
    summary["counts"]["rewrites_judged"] = int(np.isfinite(writer.score_values("rewritten")).sum())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _rate(count: float, seconds: float) -> float:
    return float(count) / seconds if seconds > 0 else 0.0
