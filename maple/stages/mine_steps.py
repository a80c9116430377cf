"""The steps of the mining pipeline (`maple.stages.mining`): batch functions and callable classes over Arrow
batches. The rules themselves are pure functions in `maple.mining.rules`; the judges in `maple.judge`; Ray only
places this work.

Ids: an image is named by its pair id, a caption by `<pair id>#<caption index>`; an output row by
`<query id>:<direction>`. Directions: `t2i` (a caption queries the images; its positive is its pair's image) and
`i2t` (an image queries the captions; its positive is its first caption, and all its captions are positives, so
none of them is ever a negative).

Flow of one query row: `query_rows` (embedding, positive) → `retrieve_candidates` (top-K ids and cosines) →
`ProposeRewrites` (i2t rows, when a rewriter is configured: rewrites of the paired caption join the candidates as
`<query id>~r<n>`) → `JudgeQueries` (the positive, then every candidate, scored together so a query's prompts share
a prefix) → `mine_queries` (JUDGED_SCHEMA columns, or a quarantine reason) → `ShardWriter` on the driver.

The batch functions run in Ray Data's task workers, each of which imports this module: it imports no torch (5 s of
CPU per worker process); the two model actors import their models' modules when they start.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from maple.data.config import WorldConfig
from maple.data.schema import QUERY_SCHEMA
from maple.judge.backends import build_judge  # torch-free: it imports the backend it builds
from maple.judge.base import make_pairs
from maple.judge.config import JudgeConfig
from maple.mining.rules import mine_batch, preference_ranking
from maple.retrieval.index import VectorIndex
from maple.rewrite.backends import build_rewriter
from maple.rewrite.base import Rewriter
from maple.rewrite.config import RewriteConfig
from maple.stages.shards import OUTPUT_SCHEMA, REASON, REWRITE_REJECTS, SHARD

RETRIEVED = "retrieved"

DIRECTIONS = ("t2i", "i2t")


def caption_id(pair_id: str, index: int) -> str:
    return f"{pair_id}#{index}"


def pair_of(item_id: str) -> str:
    """The pair id of an image id or a caption id."""
    return item_id.rsplit("#", 1)[0] if "#" in item_id else item_id


# --- content ------------------------------------------------------------------------------------------------------

class ContentStore:
    """The pairs' content by id (image bytes, captions, the synthetic world's annotation), for the stages after
    retrieval: judge inputs and the hard negatives' content. Built from a CONTENT_SCHEMA table."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.row = {pid: i for i, pid in enumerate(table["id"].to_pylist())}
        self.captions = table["captions"].to_pylist()
        self.annotations = table["annotation"].to_pylist()

    def image(self, pair_id: str) -> bytes:
        return self.table["image"][self.row[pair_id]].as_py()

    def annotation(self, pair_id: str) -> str | None:
        return self.annotations[self.row[pair_id]]

    def caption(self, item_id: str) -> str:
        pair, index = item_id.rsplit("#", 1)
        return self.captions[self.row[pair]][int(index)]

    def side(self, item_id: str, is_image: bool, rewrites: dict[str, str] | None = None) -> dict[str, Any]:
        """A judge pair side: an image (bytes + annotation), a caption, or a rewrite of the row (`rewrites`: id ->
        text)."""
        if rewrites and item_id in rewrites:
            return {"text": rewrites[item_id], "image": None, "annotation": None}
        if is_image:
            return {"text": None, "image": self.image(item_id), "annotation": self.annotation(item_id)}
        return {"text": self.caption(item_id), "image": None, "annotation": None}


_CACHE: dict[str, Any] = {}


def _cached(key: str, ref: Any, build) -> Any:
    """One deserialisation per worker process of an object-store value (the content store, the indexes, a
    rewriter)."""
    if key not in _CACHE:
        if len(_CACHE) > 8:  # a long-lived worker of several jobs: keep only recent values
            _CACHE.clear()
        _CACHE[key] = build(ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref)
    return _CACHE[key]


def _store(ref: Any) -> ContentStore:
    return _cached(f"store:{getattr(ref, 'hex', lambda: id(ref))()}", ref, ContentStore)


# --- embedding ----------------------------------------------------------------------------------------------------


class EmbedPairs:
    """Ray Data callable class: `EmbedColumns` over a pair's image and captions, returned as an Arrow table with
    explicit types (`image_emb` list<float32>, `captions_emb` list<list<float32>>). Numpy output would become Ray
    tensor columns whose type depends on the batch (fixed shape when every pair has as many captions, variable
    otherwise), which Ray cannot unify across blocks."""

    def __init__(self, model_path: str, batch_size: int):
        from maple.models.batch_inference import EmbedColumns  # torch: in the actor only (see the module's note)

        self.embed = EmbedColumns(model_path, image_columns=("image",), text_list_columns=("captions",),
                                  batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        out = self.embed(batch)
        return pa.table({
            "id": pa.array([str(x) for x in out["id"]], pa.string()),
            "source": pa.array([str(x) for x in out["source"]], pa.string()),
            "image": pa.array([bytes(x) for x in out["image"]], pa.binary()),
            "captions": pa.array([[str(c) for c in caps] for caps in out["captions"]], pa.list_(pa.string())),
            "annotation": pa.array([None if x is None else str(x) for x in out["annotation"]], pa.string()),
            "image_error": pa.array([str(x) for x in out["image_error"]], pa.string()),
            "image_emb": pa.array(list(np.asarray(out["image_emb"], np.float32)), pa.list_(pa.float32())),
            "captions_emb": pa.array([np.asarray(e, np.float32).tolist() for e in out["captions_emb"]],
                                     pa.list_(pa.list_(pa.float32()))),
        })


# --- queries ------------------------------------------------------------------------------------------------------

def query_rows(pair_ids: list[str], image_emb: np.ndarray, caption_embs: list[np.ndarray], shards: list[str],
               directions: tuple[str, ...] | list[str]) -> pa.Table:
    """The queries of N pairs: one t2i query per caption and one i2t query per image (QUERY_SCHEMA).

    image_emb: (N, D) float32; caption_embs: N arrays (n_i, D), one row per caption of pair i.
    """
    rows: dict[str, list] = {name: [] for name in QUERY_SCHEMA.names}

    def add(row_id, direction, query_id, emb, positive_id, positive_ids, shard):
        for name, value in zip(QUERY_SCHEMA.names, (row_id, direction, query_id, emb.astype(np.float32),
                                                    positive_id, positive_ids, shard)):
            rows[name].append(value)

    for pid, img, caps, shard in zip(pair_ids, image_emb, caption_embs, shards):
        cids = [caption_id(pid, j) for j in range(len(caps))]
        if "t2i" in directions:
            for cid, emb in zip(cids, caps):
                add(f"{cid}:t2i", "t2i", cid, emb, pid, [pid], shard)
        if "i2t" in directions:
            add(f"{pid}:i2t", "i2t", pid, img, cids[0], cids, shard)
    return pa.Table.from_pydict(rows, schema=QUERY_SCHEMA)


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column of N equal-length lists -> (N, D) float32."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)


# --- retrieval ----------------------------------------------------------------------------------------------------


def index_payload(index) -> dict[str, Any]:
    """A `VectorIndex` as plain data for the object store (faiss indexes do not pickle)."""
    import faiss

    return {"bytes": faiss.serialize_index(index.index), "kind": index.kind, "params": index.params, "ids": index.ids}


def _index_from_payload(payload: dict[str, Any]) -> VectorIndex:
    import faiss

    return VectorIndex(faiss.deserialize_index(payload["bytes"]), payload["kind"], payload["params"], payload["ids"])


def retrieve_candidates(batch: pa.Table, *, indexes: Any, top_k: int, min_similarity: float | None = None) -> pa.Table:
    """Adds `candidate_ids` (list<str>, K) and `candidate_sims` (list<float32>, cosine) per query, from the index of
    the query's direction (`indexes`: {direction: index_payload} or an object ref to it), leaving out candidates
    below `min_similarity` (UniME-V2's δ); `candidate_sources` ("retrieved" each) and the rewrite columns, empty
    until `ProposeRewrites` fills them."""
    start = time.perf_counter()
    key = f"indexes:{getattr(indexes, 'hex', lambda: id(indexes))()}"
    built = _cached(key, indexes, lambda p: {d: _index_from_payload(v) for d, v in p.items()})
    n = batch.num_rows
    ids: list[list[str]] = [[] for _ in range(n)]
    sims: list[list[float]] = [[] for _ in range(n)]
    directions = np.asarray(batch["direction"].to_pylist())
    emb = _matrix(batch["query_emb"])
    for direction in np.unique(directions):
        rows = np.flatnonzero(directions == direction)
        scores, indices = built[direction].search(emb[rows], top_k)
        found = built[direction].ids_at(indices)
        for r, row_ids, row_scores in zip(rows, found, scores):
            keep = [j for j, cid in enumerate(row_ids) if cid is not None
                    and (min_similarity is None or row_scores[j] >= min_similarity)]
            ids[r] = [row_ids[j] for j in keep]
            sims[r] = [float(row_scores[j]) for j in keep]
    out = batch.drop_columns(["query_emb"])
    out = out.append_column("candidate_ids", pa.array(ids, pa.list_(pa.string())))
    out = out.append_column("candidate_sims", pa.array(sims, pa.list_(pa.float32())))
    out = out.append_column("candidate_sources", pa.array([[RETRIEVED] * len(c) for c in ids], pa.list_(pa.string())))
    for column in ("rewrite_ids", "rewrite_texts", "rewrite_kinds", REWRITE_REJECTS):
        out = out.append_column(column, pa.array([[] for _ in range(n)], pa.list_(pa.string())))
    return out.append_column("_retrieve_s", pa.array(np.full(n, (time.perf_counter() - start) / max(n, 1))))


# --- rewriting ----------------------------------------------------------------------------------------------------


def rewrite_id(query_id: str, n: int) -> str:
    return f"{query_id}~r{n}"


class ProposeRewrites:
    """Ray Data callable class (one rewriter per actor, for the LLM backends): `add_rewrites` with a model loaded
    once. The grammar backend needs no actor: `propose_rewrites` runs as a plain task."""

    def __init__(self, rewrite: dict[str, Any], world: dict[str, Any], store: Any):
        self.rewriter = build_rewriter(RewriteConfig.model_validate(rewrite), WorldConfig.model_validate(world))
        self.store_ref = store

    def __call__(self, batch: pa.Table) -> pa.Table:
        return add_rewrites(batch, self.rewriter, _store(self.store_ref))


def propose_rewrites(batch: pa.Table, *, rewrite: dict[str, Any], world: dict[str, Any], store: Any) -> pa.Table:
    """`add_rewrites` as a task (the grammar backend: no model to hold), the rewriter built once per process."""
    key = f"rewriter:{json.dumps([rewrite, world], sort_keys=True)}"
    rewriter = _cached(key, None, lambda _: build_rewriter(RewriteConfig.model_validate(rewrite),
                                                           WorldConfig.model_validate(world)))
    return add_rewrites(batch, rewriter, _store(store))


def add_rewrites(batch: pa.Table, rewriter: Rewriter, store: ContentStore) -> pa.Table:
    """Rewrites of each image→text query's paired caption join its candidates (`candidate_ids` +=
    `<query id>~r<n>`, sims NaN, sources `rewrite:<kind>`), to be judged like the retrieved ones. Text→image rows are
    left as they are (their candidates are images). What the rewriter could not turn into a rewrite goes to
    `_rewrite_rejects` (JSON {reason, text}) for the shard's quarantine."""
    rows = batch.to_pylist()
    todo = [i for i, r in enumerate(rows) if r["direction"] == "i2t"]
    proposals = rewriter.rewrite([(rows[i]["query_id"], store.caption(rows[i]["positive_id"])) for i in todo]) \
        if todo else []
    for i, found in zip(todo, proposals):
        row = rows[i]
        ids = [rewrite_id(row["query_id"], n) for n in range(len(found.rewrites))]
        row["rewrite_ids"], row["rewrite_texts"] = ids, [r.text for r in found.rewrites]
        row["rewrite_kinds"] = [r.kind for r in found.rewrites]
        row[REWRITE_REJECTS] = [json.dumps({"reason": reason, "text": text}) for reason, text in found.rejects]
        row["candidate_ids"] = row["candidate_ids"] + ids
        row["candidate_sims"] = row["candidate_sims"] + [float("nan")] * len(ids)
        row["candidate_sources"] = row["candidate_sources"] + [f"rewrite:{r.kind}" for r in found.rewrites]
    return pa.Table.from_pylist(rows, schema=batch.schema)


def row_rewrites(row: dict[str, Any]) -> dict[str, str]:
    """id -> text of a query row's rewrites."""
    return dict(zip(row["rewrite_ids"], row["rewrite_texts"]))


# --- judging ------------------------------------------------------------------------------------------------------



class JudgeQueries:
    """Ray Data callable class (one judge model per actor): scores each query's positive and K candidates.

    The pairs of one query (the positive, the retrieved candidates, the rewrites) are scored in one call, positive
    first: they share the prompt prefix (instruction + query), which vLLM's prefix cache then computes once. Adds
    `positive_score` (float32, null where the judge gave no Yes/No logits) and `candidate_scores` (list<float32>,
    same nulls).
    """

    def __init__(self, judge: dict[str, Any], store: Any):
        self.backend = build_judge(JudgeConfig.model_validate(judge))
        self.store_ref = store

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        store = _store(self.store_ref)
        rows = batch.select(["direction", "query_id", "positive_id", "candidate_ids", "rewrite_ids",
                             "rewrite_texts"]).to_pylist()
        pairs, counts = [], []
        for row in rows:
            t2i = row["direction"] == "t2i"
            query = store.side(row["query_id"], is_image=not t2i)
            rewrites = row_rewrites(row)
            for cid in [row["positive_id"], *row["candidate_ids"]]:
                cand = store.side(cid, is_image=t2i, rewrites=rewrites)
                pairs.append({"query_id": row["query_id"], "query_text": query["text"], "query_image": query["image"],
                              "query_annotation": query["annotation"], "candidate_id": cid,
                              "candidate_text": cand["text"], "candidate_image": cand["image"],
                              "candidate_annotation": cand["annotation"]})
            counts.append(1 + len(row["candidate_ids"]))
        scores = self.backend.score(make_pairs(pairs)) if pairs else np.zeros(0, np.float32)
        bounds = np.cumsum([0, *counts])
        pos = [_nullable(scores[a]) for a in bounds[:-1]]
        cand = [[_nullable(s) for s in scores[a + 1:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        n, elapsed = batch.num_rows, time.perf_counter() - start
        out = batch.append_column("positive_score", pa.array(pos, pa.float32()))
        out = out.append_column("candidate_scores", pa.array(cand, pa.list_(pa.float32())))
        out = out.append_column("_judge_s", pa.array(np.full(n, elapsed / max(n, 1))))
        return out.append_column("_judge_pairs", pa.array(counts, pa.int64()))


def _nullable(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# --- mining -------------------------------------------------------------------------------------------------------

def mine_queries(batch: pa.Table, *, store: Any, k: int, beta: float, step: int, seed: int,
                 fallback_score: float | None = 1.0, ranking_max: int | None = None) -> pa.Table:
    """UniME-V2 mining (`maple.mining.rules.mine_batch`) of judged query rows, and MAPLE's preference ranking of every
    judged candidate -> JUDGED_SCHEMA columns plus the shard, the timings, the rewriter's rejects and
    `_quarantine_reason` (a row that cannot be mined keeps its id and gets the reason)."""
    start = time.perf_counter()
    content = _store(store)
    rows = batch.to_pylist()
    nan = float("nan")
    mined = mine_batch(
        [r["id"] for r in rows], [r["candidate_ids"] for r in rows],
        [[nan if s is None else s for s in r["candidate_scores"]] for r in rows],
        [r["positive_ids"] for r in rows], [nan if r["positive_score"] is None else r["positive_score"] for r in rows],
        k=k, beta=beta, step=step, seed=seed, fallback_score=fallback_score)
    out = []
    for i, r in enumerate(rows):
        t2i = r["direction"] == "t2i"
        rewrites = row_rewrites(r)

        def text(item_id: str) -> str:
            return rewrites[item_id] if item_id in rewrites else content.caption(item_id)

        negatives = mined["hard_negative_ids"][i]
        ranked = _ranking([r["positive_id"], *r["candidate_ids"]], [r["positive_score"], *r["candidate_scores"]],
                          ranking_max)
        out.append({
            "id": r["id"], "direction": r["direction"], "query_id": r["query_id"],
            "query_text": content.caption(r["query_id"]) if t2i else None,
            "query_image": None if t2i else content.image(r["query_id"]),
            "positive_id": r["positive_id"],
            "positive_text": None if t2i else content.caption(r["positive_id"]),
            "positive_image": content.image(r["positive_id"]) if t2i else None,
            "positive_score": r["positive_score"], "candidate_ids": r["candidate_ids"],
            "candidate_scores": r["candidate_scores"], "candidate_sims": r["candidate_sims"],
            "hard_negative_ids": negatives, "hard_negative_scores": mined["hard_negative_scores"][i],
            "hard_negative_texts": None if t2i else [text(c) for c in negatives],
            "hard_negative_images": [content.image(c) for c in negatives] if t2i else None,
            "num_false_negatives": mined["num_false_negatives"][i], "repeated": mined["repeated"][i],
            "fallback": mined["fallback"][i], "judge_missing": mined["judge_missing"][i],
            "candidate_sources": r["candidate_sources"],
            "ranking_ids": [c for c, _ in ranked], "ranking_scores": [s for _, s in ranked],
            "ranking_texts": None if t2i else [text(c) for c, _ in ranked],
            "ranking_images": [content.image(c) for c, _ in ranked] if t2i else None,
            "rewrite_texts": r["rewrite_texts"], "rewrite_kinds": r["rewrite_kinds"],
            SHARD: r[SHARD], REASON: mined["mining_error"][i], REWRITE_REJECTS: r[REWRITE_REJECTS],
            "_retrieve_s": r["_retrieve_s"], "_judge_s": r["_judge_s"], "_judge_pairs": r["_judge_pairs"],
            "_mine_s": 0.0,
        })
    table = pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)
    per_row = (time.perf_counter() - start) / max(len(out), 1)
    return table.set_column(table.schema.get_field_index("_mine_s"), "_mine_s",
                            pa.array(np.full(len(out), per_row)))


def _ranking(ids: list[str], scores: list[float | None], limit: int | None) -> list[tuple[str, float]]:
    """(id, score) of every scored item, best first (`preference_ranking`; ties keep list order), at most `limit`."""
    values = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
    order = preference_ranking(values)[:limit]
    return [(ids[j], float(values[j])) for j in order]
