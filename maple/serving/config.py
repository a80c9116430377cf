from typing import Literal

from pydantic import Field, model_validator

from maple.section import Section


class ServeConfig(Section):
    """The Serve application (`serve/app.py`, its `build_app(args)` takes these keys) and the index job
    (`jobs/index.py`). Model specs: a checkpoint directory, an MLflow `models:/name/version`, or None for the tiny
    random twin (demo and tests only; responses name it `maple-tiny-*`, version `random`)."""

    host: str = "127.0.0.1"  # `maple serve` only; `serve run/deploy` take http_options from serve/config.yaml
    port: int = 8000
    # Without MAPLE_API_KEY the API answers loopback clients only, and `maple serve` refuses a non-loopback host;
    # insecure=true (`maple serve --insecure`) serves everyone without a key, and says so loudly in the log.
    insecure: bool = False
    embedder: str | None = None
    reranker: str | None = None
    # a folder written by jobs/index.py, or a list of them with at most one per modality (an image index and a
    # caption index: a text query then finds images, an image query captions); None: /v1/search answers 503
    index: str | list[str] | None = None
    device: str | None = None  # None: cuda when the replica has a GPU, else cpu
    # logical CPUs the four deployments ask for together, split ½ Embedder, ¼ Reranker, ⅛ Search, ⅛ Api
    # (maple/serving/placement.py); None: 2, or the cluster's CPUs where it has fewer. serve/config.yaml's
    # `ray_actor_options` override it under `serve run`/`serve deploy`.
    num_cpus: float | None = Field(default=None, gt=0)
    # GPUs each model replica (Embedder, Reranker) asks for: 0 on CPU; e.g. 0.5 puts both on one GPU
    num_gpus: float = Field(default=0.0, ge=0)
    # torch's intra-op threads in each model replica; None: what Ray gives it (OMP_NUM_THREADS = its CPUs, at least 1)
    torch_threads: int | None = Field(default=None, gt=0)
    mlflow_tracking_uri: str | None = None  # for models:/ specs; None: MLFLOW_TRACKING_URI of the replicas
    # batching (maple.serving.batching); max_batch_size 1 turns batching off (bench/serve_load.py compares the two)
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
    # Decoded pixels: a 4000x4000 PNG of one colour is a 75 KB data URL that decodes to 48 MB, so bytes do not bound
    # memory. Per request, the images' pixels (read from their headers, before decoding) add up to at most
    # max_request_pixels (over it: 413); per ingress replica, the requests being decoded and embedded hold at most
    # max_replica_pixels, and a request waits up to pixel_budget_wait_s for its share (then 503, retry).
    max_request_pixels: int = 32_000_000
    max_replica_pixels: int = 128_000_000
    pixel_budget_wait_s: float = 30.0
    max_body_bytes: int = 32_000_000
    allow_image_urls: bool = False  # the server fetches http(s) image URLs only when true
    image_url_timeout_s: float = 10.0
    # the index job: which corpus, which modality is indexed, which faiss index
    corpus: str | None = None  # Parquet pairs (PAIRS_SCHEMA); None: <run.output_dir>/world/test
    corpus_modality: Literal["image", "text"] = "image"
    index_kind: Literal["auto", "exact", "ivf", "hnsw"] = "auto"

    @property
    def index_folders(self) -> list[str]:
        """`index` as a list: the folders the server loads (one per modality)."""
        return [] if self.index is None else [self.index] if isinstance(self.index, str) else list(self.index)

    @model_validator(mode="after")
    def _pixel_limits_nest(self):
        if not self.max_image_pixels <= self.max_request_pixels <= self.max_replica_pixels:
            raise ValueError(f"pixel limits must nest: max_image_pixels ({self.max_image_pixels}) <= "
                             f"max_request_pixels ({self.max_request_pixels}) <= max_replica_pixels "
                             f"({self.max_replica_pixels})")
        return self
