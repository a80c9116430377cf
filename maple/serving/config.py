from typing import Literal

from maple.section import Section


class ServeConfig(Section):
    """The Serve application (`serve/app.py`, its `build_app(args)` takes these keys) and the index job
    (`jobs/index.py`). Model specs: a checkpoint directory, an MLflow `models:/name/version`, or None for the tiny
    random twin (demo and tests only; responses name it `maple-tiny-*`, version `random`)."""

    host: str = "127.0.0.1"  # `maple serve` only; `serve run/deploy` take http_options from serve/config.yaml
    port: int = 8000
    embedder: str | None = None
    reranker: str | None = None
    index: str | None = None  # a folder written by jobs/index.py; None: /v1/search answers 503
    device: str | None = None  # None: cuda when the replica has a GPU, else cpu
    mlflow_tracking_uri: str | None = None  # for models:/ specs; None: MLFLOW_TRACKING_URI of the replicas
    # batching (@serve.batch); max_batch_size 1 turns batching off (bench/serve_load.py compares the two)
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    rerank_max_batch_size: int = 8
    # search
    rerank_depth: int = 50  # candidates retrieved and reranked when a search asks for rerank
    max_top_k: int = 100
    # limits: over a limit -> 413, malformed -> 422
    max_inputs: int = 256  # embedding inputs or rerank documents per request
    max_text_chars: int = 8192
    max_image_pixels: int = 16_000_000
    max_body_bytes: int = 32_000_000
    allow_image_urls: bool = False  # the server fetches http(s) image URLs only when true
    image_url_timeout_s: float = 10.0
    # the index job: which corpus, which modality is indexed, which faiss index
    corpus: str | None = None  # Parquet pairs (PAIRS_SCHEMA); None: <run.output_dir>/world/test
    corpus_modality: Literal["image", "text"] = "image"
    index_kind: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
