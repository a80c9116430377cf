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

import mlflow

from jobs.common import build_search_index
from maple.runtime import init_ray, parse_config
from maple.tracking import mlflow_run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, __doc__)
    init_ray(cfg.run)
    with mlflow_run(cfg.run, "index", cfg):
        manifest = build_search_index(cfg)
        mlflow.log_metrics({"index_size": manifest["size"], "index_quarantined": manifest["quarantined"]})
        mlflow.log_dict(manifest, "index_manifest.json")
    print(json.dumps(manifest))
    return manifest


if __name__ == "__main__":
    main(sys.argv[1:])
