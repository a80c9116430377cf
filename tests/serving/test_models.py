"""Model naming and the batched embedding call (maple.serving.models), and the served index format
(maple.serving.search_index)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from maple.retrieval.index import build_index
from maple.serving.cards import model_card
from maple.serving.errors import ItemError
from maple.serving.models import embed_chunks, embed_contents, score_each, tiny_embedder
from maple.serving.search_index import DOCUMENTS_SCHEMA, SearchIndex, save_search_index


def test_registry_uri_names_the_model_and_its_version():
    card = model_card("models:/maple/3", "embedding")
    assert (card.id, card.version, card.source) == ("maple", "3", "models:/maple/3")


def test_a_directory_is_named_by_its_folder_with_version_local(tmp_path):
    card = model_card(str(tmp_path / "full"), "embedding")
    assert (card.id, card.version) == ("full", "local")


def test_the_tiny_twin_says_it_is_random():
    card = model_card(None, "embedding", tiny_id="maple-tiny-clip")
    assert (card.id, card.version, card.source) == ("maple-tiny-clip", "random", "tiny-random")


def test_the_tiny_twin_is_the_same_in_every_process():
    a, b = tiny_embedder(), tiny_embedder()
    assert all(np.array_equal(x.detach().numpy(), y.detach().numpy())
               for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def embedder():
    return tiny_embedder().eval()


def test_mixed_batch_embeds_each_item_as_the_model_does_alone(embedder):
    images = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    contents = ["a red circle", images[0], "a blue square above a green circle", images[1]]
    vectors, tokens = embed_contents(embedder, contents)
    texts = embedder.encode_texts(["a red circle", "a blue square above a green circle"]).numpy()
    pictures = embedder.encode_images(images).numpy()
    np.testing.assert_allclose(vectors, np.stack([texts[0], pictures[0], texts[1], pictures[1]]), atol=1e-5)
    assert tokens[1] == tokens[3] == 0 and 0 < tokens[0] < tokens[2]


def test_embeddings_are_unit_length(embedder):
    vectors, _ = embed_contents(embedder, ["a", "b c", Image.new("RGB", (64, 64))])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


BAD_TEXT = "a lone \ud800 surrogate"  # the tokenizer raises on it


def test_an_input_that_fails_the_batch_fails_only_its_own_caller(embedder):
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    chunks = [["a red circle"], ["fine", BAD_TEXT], [image, "a green square"]]
    with pytest.raises(Exception):  # noqa: B017 - whatever the tokenizer raises: the batch as one call fails
        embed_contents(embedder, [item for chunk in chunks for item in chunk])
    results = embed_chunks(embedder, chunks)
    assert isinstance(results[1], ItemError) and results[1].index == 1
    for chunk, result in zip(chunks[::2], results[::2]):
        alone, tokens = embed_contents(embedder, chunk)
        np.testing.assert_allclose(result[0], alone, atol=1e-5)
        assert result[1] == tokens


def test_an_item_error_names_the_input_in_the_request():
    error = ItemError(1, "TypeError: bad").to_api_error(offset=32, param="input")
    assert (error.status, error.code, error.param) == (422, "invalid_input", "input[33]")
    assert ItemError(None, "OOM").to_api_error().status == 500


def test_a_rerank_request_that_fails_fails_alone():
    from maple.models.config import RerankerConfig
    from maple.models.families import build_reranker

    reranker = build_reranker(RerankerConfig()).eval()
    requests = [("a red circle", ["a red circle", "a blue square"]), (BAD_TEXT, ["x"]), ("a square", ["a square"])]
    results = score_each(reranker, requests)
    assert isinstance(results[1], ItemError)
    for (query, documents), result in zip(requests[::2], results[::2]):
        np.testing.assert_allclose(result, reranker.score(query, documents), atol=1e-5)


def make_index(tmp_path, n: int = 20, d: int = 8):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, d))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"doc{i}" for i in range(n)]
    docs = pa.Table.from_pylist([{"id": i, "text": f"text {k}", "image": None, "payload": json.dumps({"n": k})}
                                 for k, i in enumerate(ids)], schema=DOCUMENTS_SCHEMA)
    save_search_index(tmp_path, build_index(vectors, "exact", ids=ids), docs, {"embedder": "test"})
    return SearchIndex.load(tmp_path), vectors


def test_search_returns_the_brute_force_top_k_with_payloads(tmp_path):
    index, vectors = make_index(tmp_path)
    query = vectors[3] + 0.1 * vectors[7]
    query /= np.linalg.norm(query)
    hits = index.search(query, 5)
    order = sorted(range(len(vectors)), key=lambda i: -float(np.dot(vectors[i].astype(np.float64), query)))[:5]
    assert [h["id"] for h in hits] == [f"doc{i}" for i in order]
    assert [h["payload"]["n"] for h in hits] == order
    assert "content" not in hits[0]


def test_search_with_content_returns_the_documents_text(tmp_path):
    index, vectors = make_index(tmp_path)
    assert index.search(vectors[4], 1, with_content=True)[0]["content"] == "text 4"


def test_manifest_records_size_and_dimension(tmp_path):
    index, _ = make_index(tmp_path)
    assert (index.manifest["size"], index.manifest["dim"], index.size) == (20, 8, 20)


def test_documents_out_of_index_order_are_refused(tmp_path):
    vectors = np.eye(2, dtype=np.float32)
    docs = pa.Table.from_pylist([{"id": "b", "text": "", "image": None, "payload": "{}"},
                                 {"id": "a", "text": "", "image": None, "payload": "{}"}], schema=DOCUMENTS_SCHEMA)
    with pytest.raises(ValueError, match="index order"):
        save_search_index(tmp_path, build_index(vectors, "exact", ids=["a", "b"]), docs, {})
