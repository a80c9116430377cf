"""The HTTP API's request and response bodies (pydantic), in the shapes existing clients send and parse:

- `POST /v1/embeddings`: OpenAI's (`openai.embeddings.create` works unchanged), inputs extended with
  `{"text": ...}` and `{"image": data URL | base64 | URL}` items as Jina's multimodal API does;
- `POST /v1/rerank`: Cohere's / Jina's (`query`, `documents`, `top_n`, `return_documents` → `results[index,
  relevance_score, document]`);
- `POST /v1/search`: maple's own (retrieve from a served index, optionally rerank, optionally return the
  documents found so that a client can show them);
- `GET /v1/models`: OpenAI's model list.

Unknown top-level request fields are ignored, as the services these mimic do (clients send `user`, `task`, ...);
the inputs themselves are checked strictly by `maple.serving.inputs`.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from maple.serving.errors import ApiError


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Response(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


# --- requests --------------------------------------------------------------------------------------------------


class EmbeddingRequest(Request):
    model: str | None = None
    # str | list of (str | {"text": str} | {"image": str}); parsed by maple.serving.inputs.parse_inputs so that an
    # invalid item gets a message naming its position.
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


class RerankRequest(Request):
    model: str | None = None
    query: Any  # str | {"text": str} | {"image": str}
    documents: list[Any]  # each str | {"text": str} | {"image": str}
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = True  # Jina's default; Cohere's clients pass it explicitly


class RerankRequestV2(Request):
    """Cohere's v2 rerank (`cohere.ClientV2().rerank`): `model` is required and the client sends documents as
    strings; maple also takes {"text"}/{"image"} items here, as on v1. `max_tokens_per_doc` is accepted: the
    reranker truncates each (query, document) pair to its own window."""

    model: str
    query: Any
    documents: list[Any]
    top_n: int | None = Field(default=None, ge=1)
    max_tokens_per_doc: int | None = Field(default=None, ge=1)


class SearchRequest(Request):
    model: str | None = None
    query: Any  # str | {"text": str} | {"image": str}
    top_k: int = Field(default=10, ge=1)
    rerank: bool = False
    # which served index to search: "image" (pictures) or "text" (captions); None: the only one, else the one of
    # the other modality than the query (index_for)
    modality: Literal["image", "text"] | None = None
    # each hit's document as {"text": str} or {"image": data URL} (the shape of rerank's `document`); off by
    # default: image documents make the response as large as the pictures
    return_documents: bool = False


# --- responses -------------------------------------------------------------------------------------------------


class Usage(Response):
    prompt_tokens: int
    total_tokens: int


class Embedding(Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32, as the openai client decodes it


class EmbeddingResponse(Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    model_version: str
    usage: Usage


class RerankResult(Response):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class RerankUsage(Response):
    documents: int  # documents scored (the reranker's cost; it has no shared tokenizer to count tokens with)


class RerankResponse(Response):
    model: str
    model_version: str
    results: list[RerankResult]
    usage: RerankUsage


class RerankResultV2(Response):
    index: int
    relevance_score: float


class RerankResponseV2(Response):
    """Cohere v2's shape (no documents echoed back); `model` and `model_version` added, as on v1."""

    id: str
    results: list[RerankResultV2]
    meta: dict[str, Any]
    model: str
    model_version: str


class SearchHit(Response):
    id: str
    score: float  # cosine similarity of query and candidate embeddings
    rerank_score: float | None = None  # the reranker's relevance when the request asked for rerank
    payload: dict[str, Any]
    document: dict[str, str] | None = None  # {"text": ...} or {"image": data URL}, when return_documents


class SearchResponse(Response):
    object: Literal["list"] = "list"
    data: list[SearchHit]
    model: str
    model_version: str
    reranker: str | None = None  # "name:version" of the reranker when rerank was applied
    modality: Literal["image", "text"]  # what the searched index holds
    index_size: int  # documents in the searched index


class ModelCard(Response):
    """One served model: OpenAI's model object plus where it came from."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "maple"
    version: str  # the registry version, "local" for a checkpoint directory, "random" for the tiny twin
    kind: Literal["embedding", "rerank"]
    source: str  # the spec it was loaded from: models:/name/version, a directory, or "tiny-random"
    dimensions: int | None = None  # embedding models: the vector size


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- search ----------------------------------------------------------------------------------------------------


def index_for(served: Collection[str], requested: str | None, query_kind: str) -> str:
    """The modality whose index answers a search: the one `requested`; else the only one served; else the other
    modality than the query's (a text finds images, an image finds captions: cross-modal retrieval, what the
    embedder is trained for). ApiError 404 when the requested modality has no index here."""
    if requested is not None:
        if requested not in served:
            raise ApiError(404, f"modality={requested!r}: this server has no {requested} index; it indexes "
                                f"{sorted(served)}", "index_not_found", "modality")
        return requested
    if len(served) == 1:
        return next(iter(served))
    return "text" if query_kind == "image" else "image"


# --- vector encodings ------------------------------------------------------------------------------------------


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first `dimensions` components and L2-normalise again (OpenAI's `dimensions`; meaningful for
    Matryoshka-trained models, a plain projection otherwise).

    vectors: (N, D) float32. Returns (N, dimensions) float32 with unit rows; ApiError 422 when dimensions > D.
    """
    if dimensions is None:
        return vectors
    if dimensions > vectors.shape[1]:
        raise ApiError(422, f"dimensions={dimensions} exceeds the model's embedding size {vectors.shape[1]}",
                       "invalid_dimensions", "dimensions")
    kept = vectors[:, :dimensions].astype(np.float64)
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    return (kept / np.maximum(norms, 1e-12)).astype(np.float32)


def encode_embedding(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """(D,) -> a list of floats, or base64 of the little-endian float32 bytes (what `openai` decodes with
    `np.frombuffer(base64.b64decode(s), dtype="float32")`)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in np.asarray(vector, dtype=np.float32)]
