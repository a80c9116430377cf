"""The search index a server answers `/v1/search` from: a folder written by `jobs/index.py`.

Layout (one folder):
- `index.faiss`, `index.json`: the `maple.retrieval.index.VectorIndex` over the corpus embeddings (ids inside);
- `documents.parquet` (DOCUMENTS_SCHEMA): row i is the candidate at index position i — its id, its content (the
  text, or the encoded image the reranker needs) and its payload (JSON of the corpus row's other fields);
- `manifest.json`: the embedder that produced the vectors (spec, id, version), modality, size, corpus.

A server may hold one index per modality (`serve.index: [images, captions]`, `load_indexes`); which one answers a
search is `maple.serving.api.index_for`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maple.data.images import to_data_url
from maple.data.schema import DOCUMENTS_SCHEMA
from maple.retrieval.index import VectorIndex

DOCUMENTS_FILE = "documents.parquet"
MANIFEST_FILE = "manifest.json"


def save_search_index(folder: str | Path, index: VectorIndex, documents: pa.Table, manifest: dict[str, Any]) -> None:
    """Write the three parts; `documents` rows must be in index order with the index's ids."""
    documents = documents.select(DOCUMENTS_SCHEMA.names).cast(DOCUMENTS_SCHEMA)
    if index.ids is None or documents.column("id").to_pylist() != index.ids:
        raise ValueError("save_search_index: documents must list the index's ids in index order")
    folder = Path(folder)
    index.save(folder)
    pq.write_table(documents, folder / DOCUMENTS_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "size": index.ntotal, "dim": index.dim}, indent=1))


class SearchIndex:
    """Vectors, documents and manifest of one index folder, loaded for serving."""

    def __init__(self, index: VectorIndex, documents: pa.Table, manifest: dict[str, Any]):
        self.index, self.documents, self.manifest = index, documents, manifest
        self.payloads = [json.loads(p) for p in documents.column("payload").to_pylist()]

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        folder = Path(folder)
        for name in (DOCUMENTS_FILE, MANIFEST_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing; build the index with "
                                        "`python -m jobs.index serve.index=<folder>`")
        index = VectorIndex.load(folder)
        documents = pq.read_table(folder / DOCUMENTS_FILE, schema=DOCUMENTS_SCHEMA)
        if documents.column("id").to_pylist() != index.ids:
            raise ValueError(f"{folder}: {DOCUMENTS_FILE} and index.json list different ids; rebuild the index")
        return cls(index, documents, json.loads((folder / MANIFEST_FILE).read_text()))

    @property
    def size(self) -> int:
        return self.index.ntotal

    @property
    def modality(self) -> str:
        return self.manifest.get("modality", "image")

    def search(self, query: np.ndarray, k: int, with_content: bool = False,
               with_documents: bool = False) -> list[dict[str, Any]]:
        """The k nearest candidates of one query, best first.

        query: (D,) float32, L2-normalised. Returns [{"id", "score", "payload"}] (+ "content": the text or the
        encoded image bytes, when `with_content`, for reranking; + "document": {"text": str} or {"image": data URL},
        when `with_documents`, for clients to show).
        """
        scores, positions = self.index.search(np.asarray(query, np.float32)[None, :], k)
        hits = []
        for score, pos in zip(scores[0].tolist(), positions[0].tolist()):
            if pos < 0:
                continue
            hit = {"id": self.index.ids[pos], "score": float(score), "payload": self.payloads[pos]}
            if with_content or with_documents:
                text = self.documents.column("text")[pos].as_py()
                content = text if text is not None else self.documents.column("image")[pos].as_py()
                if with_content:
                    hit["content"] = content
                if with_documents:
                    hit["document"] = {"text": content} if text is not None else {"image": to_data_url(content)}
            hits.append(hit)
        return hits


def load_indexes(folders: list[str]) -> dict[str, SearchIndex]:
    """The served indexes by modality ("image", "text"); ValueError when two folders index the same modality."""
    indexes: dict[str, SearchIndex] = {}
    folder_of: dict[str, str] = {}
    for folder in folders:
        index = SearchIndex.load(folder)
        if index.modality in indexes:
            raise ValueError(f"serve.index: {folder_of[index.modality]} and {folder} both index {index.modality}s; "
                             "serve at most one index per modality (jobs/index.py, serve.corpus_modality)")
        indexes[index.modality], folder_of[index.modality] = index, str(folder)
    return indexes

