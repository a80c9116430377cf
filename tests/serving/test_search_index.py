"""The served search index (maple.serving.search_index) without Ray: documents returned for clients to show, and one
index per modality."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from maple.data.images import b64_to_bytes, encode_image
from maple.data.schema import DOCUMENTS_SCHEMA
from maple.retrieval.index import build_index
from maple.serving.search_index import SearchIndex, load_indexes, save_search_index


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_index(folder, modality: str, n: int = 3, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    vectors = unit_rows(n, 8, seed)
    if modality == "image":
        docs = [{"id": f"p{i}", "text": None, "payload": json.dumps({"captions": [f"caption {i}"]}),
                 "image": encode_image(Image.new("RGB", (4 + i, 4), (40 * i, 90, 200)),
                                       "jpeg" if i == 1 else "png")} for i in range(n)]
    else:
        docs = [{"id": f"p{i}#0", "text": f"caption {i}", "image": None, "payload": json.dumps({"pair_id": f"p{i}"})}
                for i in range(n)]
    index = build_index(vectors, "exact", ids=[d["id"] for d in docs])
    save_search_index(folder, index, pa.Table.from_pylist(docs, schema=DOCUMENTS_SCHEMA), {"modality": modality})
    return vectors, docs


def test_image_documents_are_data_urls_of_the_stored_bytes(tmp_path):
    vectors, docs = write_index(tmp_path, "image")
    hits = SearchIndex.load(tmp_path).search(vectors[1], 3, with_documents=True)
    stored = {d["id"]: d["image"] for d in docs}
    assert hits[0]["id"] == "p1" and hits[0]["document"]["image"].startswith("data:image/jpeg;base64,")
    for hit in hits:
        assert b64_to_bytes(hit["document"]["image"]) == stored[hit["id"]] and "content" not in hit


def test_text_documents_are_the_captions_and_content_stays_for_the_reranker(tmp_path):
    vectors, _ = write_index(tmp_path, "text")
    (hit,) = SearchIndex.load(tmp_path).search(vectors[2], 1, with_content=True, with_documents=True)
    assert hit["document"] == {"text": "caption 2"} and hit["content"] == "caption 2"


def test_one_index_per_modality(tmp_path):
    write_index(tmp_path / "images", "image")
    write_index(tmp_path / "captions", "text")
    write_index(tmp_path / "more-images", "image", seed=1)
    indexes = load_indexes([str(tmp_path / "images"), str(tmp_path / "captions")])
    assert {m: i.size for m, i in indexes.items()} == {"image": 3, "text": 3}
    with pytest.raises(ValueError, match="images and .*more-images both index images; serve at most one index per "):
        load_indexes([str(tmp_path / "images"), str(tmp_path / "more-images")])
