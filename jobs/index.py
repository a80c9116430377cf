"""Build the search index that the server's `/v1/search` answers from.

A corpus of image-text pairs (Parquet, PAIRS_SCHEMA) is embedded by the served embedder in a Ray Data actor pool
(`EmbedColumns`); the vectors go into a faiss index (`maple.retrieval.index.build_index`) and the ids, contents
(the image bytes or the text, for reranking) and payloads (the row's other fields) are saved beside it
(`maple.serving.search_index`). `serve.corpus_modality` picks what is indexed: the images (a text query finds
pictures) or the captions, one document per caption with id `<pair id>#<k>`. Rows whose image does not decode are
quarantined with the reason (`<index>/quarantine/index.parquet`), not indexed.

    python -m jobs.index --config configs/demo.yaml serve.embedder=models:/maple/1 serve.index=runs/demo/index

Serve the same embedder that built the index: the server refuses an index of another dimension.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa

from maple.config import Config
from maple.data.files import atomic_path
from maple.data.quarantine import write_quarantine
from maple.data.schema import DOCUMENTS_SCHEMA
from maple.models.batch_inference import EmbedColumns
from maple.retrieval.index import build_index
from maple.runtime import init_ray, parse_config
from maple.serving.models import TINY_SOURCE, local_model_dir, model_card, tiny_embedder
from maple.serving.search_index import save_search_index
from maple.tracking import mlflow_run, tracking_uri

_PAYLOAD_SKIP = {"id", "image", "image_emb", "image_error", "captions_emb"}


def embedder_dir(cfg: Config) -> str:
    """The served embedder as a directory for the actor pool: the spec's directory or registry download, or the
    server's tiny twin (`maple.serving.models.tiny_embedder`) saved once under `run.output_dir`."""
    spec = cfg.serve.embedder
    if spec:
        return local_model_dir(spec, cfg.serve.mlflow_tracking_uri or tracking_uri(cfg.run))
    path = Path(cfg.run.output_dir) / "models" / TINY_SOURCE
    if not (path / "maple_embedder.json").exists():
        tiny_embedder().save_pretrained(path)
    return str(path)


def _payload(row: dict) -> str:
    return json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()
                       if k not in _PAYLOAD_SKIP})


def embed_corpus(cfg: Config, corpus: str, model_path: str) -> tuple[np.ndarray, pa.Table, list[dict]]:
    """Embed the corpus: (M, D) vectors, the M documents (DOCUMENTS_SCHEMA rows) and the quarantined rows."""
    import ray.data

    images = cfg.serve.corpus_modality == "image"
    ds = ray.data.read_parquet(corpus)
    if not images:
        ds = ds.drop_columns(["image"])
    columns = {"image_columns": ("image",)} if images else {"text_list_columns": ("captions",)}
    ds = ds.map_batches(EmbedColumns, fn_constructor_kwargs=dict(model_path=model_path, **columns,
                                                                  batch_size=cfg.serve.max_batch_size),
                        batch_size=cfg.serve.max_batch_size, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    vectors, docs, quarantined = [], [], []
    for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
        for row in batch.to_dict("records"):
            if images and row["image_error"]:
                quarantined.append({"id": row["id"], "source": row.get("source"), "stage": "index",
                                    "reason": row["image_error"], "row": _payload(row)})
            elif images:
                vectors.append(row["image_emb"])
                docs.append({"id": row["id"], "text": None, "image": row["image"], "payload": _payload(row)})
            else:
                for k, (caption, vector) in enumerate(zip(row["captions"], row["captions_emb"])):
                    vectors.append(vector)
                    payload = {"pair_id": row["id"], "caption_index": k, **json.loads(_payload(row))}
                    payload.pop("captions", None)
                    docs.append({"id": f"{row['id']}#{k}", "text": str(caption), "image": None,
                                 "payload": json.dumps(payload)})
    if not vectors:
        raise ValueError(f"{corpus}: no row could be indexed ({len(quarantined)} quarantined); check the corpus")
    return np.stack(vectors).astype(np.float32), pa.Table.from_pylist(docs, schema=DOCUMENTS_SCHEMA), quarantined


def build(cfg: Config) -> dict:
    """Embed, index and save; returns the manifest written beside the index."""
    corpus = cfg.serve.corpus or str(Path(cfg.run.output_dir) / "world" / "test")
    out = Path(cfg.serve.index or Path(cfg.run.output_dir) / "index")
    model_path = embedder_dir(cfg)
    vectors, documents, quarantined = embed_corpus(cfg, corpus, model_path)
    index = build_index(vectors, cfg.serve.index_kind, ids=documents.column("id").to_pylist(), seed=cfg.run.seed)
    card = model_card(cfg.serve.embedder, "embedding", cfg.serve.mlflow_tracking_uri, index.dim)
    manifest = {"embedder": cfg.serve.embedder or TINY_SOURCE, "embedder_id": card.id,
                "embedder_version": card.version, "modality": cfg.serve.corpus_modality, "corpus": corpus,
                "kind": index.kind, "quarantined": len(quarantined)}
    with atomic_path(out) as tmp:  # written aside and moved into place: a server never loads a half-written index
        save_search_index(tmp, index, documents, manifest)
        write_quarantine(quarantined, tmp, "index")
    return {**manifest, "size": index.ntotal, "dim": index.dim, "path": str(out)}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    with mlflow_run(cfg.run, "index", cfg):
        manifest = build(cfg)
        mlflow.log_metrics({"index_size": manifest["size"], "index_quarantined": manifest["quarantined"]})
        mlflow.log_dict(manifest, "index_manifest.json")
    print(json.dumps(manifest))
    return manifest


if __name__ == "__main__":
    main(sys.argv[1:])
