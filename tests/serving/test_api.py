"""Response encodings (maple.serving.api) and the HTTP guard and error shape (maple.serving.http), on a plain
FastAPI app without Ray."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maple.serving.api import EmbeddingRequest, SearchRequest, encode_embedding, index_for, truncate_dimensions
from maple.serving.errors import ApiError
from maple.serving.http import GuardSettings, RequestGuard, install_error_handlers
from maple.serving.inputs import key_digest


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_base64_encoding_decodes_as_the_openai_client_does():
    vector = unit_rows(1, 8)[0]
    text = encode_embedding(vector, "base64")
    # openai/resources/embeddings.py: np.frombuffer(base64.b64decode(data), dtype="float32")
    assert np.array_equal(np.frombuffer(base64.b64decode(text), dtype="float32"), vector)


def test_base64_encoding_is_little_endian_float32():
    raw = base64.b64decode(encode_embedding(np.array([1.5, -2.0], np.float32), "base64"))
    assert struct.unpack("<2f", raw) == (1.5, -2.0)


def test_float_encoding_is_a_list_of_python_floats():
    assert encode_embedding(np.array([0.5, 0.25], np.float32), "float") == [0.5, 0.25]


def test_dimensions_keep_the_leading_components_renormalised():
    vectors = unit_rows(3, 8)
    cut = truncate_dimensions(vectors, 3)
    expected = [row[:3] / np.sqrt(sum(float(x) ** 2 for x in row[:3])) for row in vectors.astype(np.float64)]
    np.testing.assert_allclose(cut, np.array(expected), rtol=1e-6)


def test_dimensions_above_the_embedding_size_are_422():
    with pytest.raises(ApiError) as info:
        truncate_dimensions(unit_rows(1, 4), 5)
    assert info.value.status == 422


def test_unknown_top_level_fields_are_ignored_like_the_services_mimicked():
    assert EmbeddingRequest.model_validate({"input": "a", "user": "u1", "task": "x"}).input == "a"



@pytest.mark.parametrize("served,requested,query,expected", [
    ({"image"}, None, "text", "image"), ({"image"}, None, "image", "image"),  # one index answers every query
    ({"image", "text"}, None, "text", "image"), ({"image", "text"}, None, "image", "text"),  # cross-modal
    ({"image", "text"}, "image", "image", "image"), ({"image", "text"}, "text", "text", "text"),  # as asked
])
def test_index_for_picks_the_asked_the_only_or_the_other_modality(served, requested, query, expected):
    assert index_for(served, requested, query) == expected


def test_index_for_a_modality_not_served_is_404_naming_what_is():
    with pytest.raises(ApiError, match=r"no text index; it indexes \['image'\]") as info:
        index_for({"image"}, "text", "image")
    assert (info.value.status, info.value.code, info.value.param) == (404, "index_not_found", "modality")


def test_search_requests_return_no_documents_unless_asked():
    assert SearchRequest.model_validate({"query": "a"}).return_documents is False

@pytest.fixture
def client():
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestGuard, settings=lambda: GuardSettings(max_body_bytes=100,
                                                                    api_key_digest=key_digest("k")))

    @app.post("/echo")
    async def echo(body: EmbeddingRequest) -> dict:
        if body.input == "refuse":
            raise ApiError(413, "too big", "too_many_inputs", "input")
        return {"input": body.input}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return TestClient(app)


AUTH = {"Authorization": "Bearer k"}


def test_guard_lets_an_authorised_request_within_the_limit_through(client):
    assert client.post("/echo", json={"input": "a"}, headers=AUTH).json() == {"input": "a"}


def test_guard_refuses_a_missing_key_before_reading_the_body(client):
    response = client.post("/echo", content=b"x" * 1000)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_health_needs_no_key(client):
    assert client.get("/health").status_code == 200


def test_guard_refuses_a_declared_body_over_the_limit_with_413(client):
    response = client.post("/echo", content=b"{" + b" " * 200 + b"}", headers=AUTH)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_guard_refuses_a_chunked_body_over_the_limit_with_413(client):
    chunks = (b" " * 60 for _ in range(4))  # no Content-Length: counted as it arrives
    response = client.post("/echo", content=chunks, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413


def test_errors_have_the_openai_error_shape(client):
    error = client.post("/echo", json={"input": "refuse"}, headers=AUTH).json()["error"]
    assert error == {"message": "too big", "type": "request_too_large", "code": "too_many_inputs", "param": "input"}


def test_a_body_that_fails_validation_is_422_in_the_error_shape(client):
    response = client.post("/echo", json={"encoding_format": "hex"}, headers=AUTH)
    assert response.status_code == 422
    assert set(response.json()["error"]) == {"message", "type", "code", "param"}
    assert "input" in response.json()["error"]["message"]


def test_malformed_json_is_422(client):
    response = client.post("/echo", content=b"{bad", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_unknown_routes_are_404_in_the_error_shape(client):
    assert client.get("/nope", headers=AUTH).json()["error"]["code"] == "not_found"


def keyless_app(loopback_only: bool) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestGuard, settings=lambda: GuardSettings(max_body_bytes=100, api_key_digest=None,
                                                                    loopback_only=loopback_only))

    @app.post("/echo")
    async def echo(body: EmbeddingRequest) -> dict:
        return {"input": body.input}

    return app


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "127.0.0.9"])
def test_without_a_key_loopback_clients_are_served(peer):
    client = TestClient(keyless_app(loopback_only=True), client=(peer, 50000))
    assert client.post("/echo", json={"input": "a"}).json() == {"input": "a"}


@pytest.mark.parametrize("peer", ["10.1.2.3", "192.168.0.7", "203.0.113.9", "testclient"])
def test_without_a_key_clients_beyond_loopback_are_401_even_with_forwarded_headers(peer):
    client = TestClient(keyless_app(loopback_only=True), client=(peer, 50000))
    response = client.post("/echo", json={"input": "a"}, headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_not_configured"


def test_insecure_serves_every_client_without_a_key():
    client = TestClient(keyless_app(loopback_only=False), client=("203.0.113.9", 50000))
    assert client.post("/echo", json={"input": "a"}).status_code == 200
