"""The Serve application end to end on 127.0.0.1 (the folder's shared `server`, tests/serve/conftest.py): the
embedder from the MLflow registry, the reranker from a checkpoint directory, an image and a caption index from
jobs/index.py, bearer auth on. Every answer is compared with the same model run directly in the test process."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from openai import OpenAI
from PIL import Image

from maple.data.images import decode_image, encode_image
from maple.models.families import load_embedder, load_reranker
from tests.fixtures.serve import KEY, LIMITS, REGISTERED_NAME


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    return load_embedder(embedder_dir)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    return load_reranker(str(reranker_dir))


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def post(server: str, path: str, body=None, key: str | None = KEY, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{server}{path}", json=body, headers=headers, timeout=60, **kwargs)


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_image(image)).decode()


def corpus_images(corpus, n: int) -> list[tuple[str, bytes]]:
    rows = pq.read_table(sorted(corpus.glob("*.parquet"))[0], columns=["id", "image"]).to_pylist()[:n]
    return [(r["id"], r["image"]) for r in rows]


TEXTS = ["a small red circle", "a large blue square left of a small green triangle"]


# --- embeddings -------------------------------------------------------------------------------------------------


def test_openai_client_text_embeddings_equal_the_registered_model(client, embedder):
    response = client.embeddings.create(model=REGISTERED_NAME, input=TEXTS)  # the client asks for base64
    got = np.array([d.embedding for d in response.data])
    np.testing.assert_allclose(got, embedder.encode_texts(TEXTS).numpy(), atol=1e-5)
    assert response.model == REGISTERED_NAME and response.usage.prompt_tokens > 0


def test_float_encoding_gives_the_same_vectors(client, embedder):
    response = client.embeddings.create(model=REGISTERED_NAME, input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(response.data[0].embedding, embedder.encode_texts(TEXTS[:1]).numpy()[0], atol=1e-5)


def test_openai_client_image_embeddings_equal_the_registered_model(client, embedder, corpus):
    (_, png), = corpus_images(corpus, 1)
    image = decode_image(png)
    response = client.embeddings.create(model=REGISTERED_NAME, input=[{"image": data_url(image)}, TEXTS[0]])
    np.testing.assert_allclose(response.data[0].embedding, embedder.encode_images([image]).numpy()[0], atol=1e-5)
    np.testing.assert_allclose(response.data[1].embedding, embedder.encode_texts(TEXTS[:1]).numpy()[0], atol=1e-5)


def test_dimensions_truncate_and_renormalise(client, embedder):
    response = client.embeddings.create(model=REGISTERED_NAME, input=TEXTS[0], dimensions=16)
    full = embedder.encode_texts(TEXTS[:1]).numpy()[0, :16].astype(np.float64)
    np.testing.assert_allclose(response.data[0].embedding, full / np.linalg.norm(full), atol=1e-5)


def test_models_lists_the_registered_embedder_and_the_reranker_with_versions(server):
    models = requests.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    cards = {m["kind"]: m for m in models["data"]}
    assert (cards["embedding"]["id"], cards["embedding"]["version"]) == (REGISTERED_NAME, "1")
    assert (cards["rerank"]["id"], cards["rerank"]["version"]) == ("tiny-cross-encoder", "local")


# --- rerank -------------------------------------------------------------------------------------------------------


def test_rerank_orders_documents_by_the_rerankers_scores(server, reranker):
    documents = ["a small red circle", "a large yellow diamond", "a small red circle above a blue square"]
    body = post(server, "/v1/rerank", {"query": "a red circle", "documents": documents, "top_n": 2}).json()
    expected = reranker.score("a red circle", documents)
    order = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [expected[i] for i in order],
                               atol=1e-4)
    assert body["results"][0]["document"] == {"text": documents[order[0]]}
    assert (body["model"], body["model_version"]) == ("tiny-cross-encoder", "local")


def test_concurrent_reranks_share_batches_and_each_gets_its_own_scores(server, reranker):
    """The Reranker runs the pairs of several requests in one pass (`score_many`); lists of different lengths and
    queries must not mix."""
    from ray import serve

    queries = [f"a {c} circle" for c in ("red", "blue", "green", "white", "yellow", "purple")]
    documents = [[f"a {s} {c} square" for s in ("small", "large")][: 1 + i % 2] + ["a diamond"] for i, c in
                 enumerate(queries)]
    stats = serve.get_deployment_handle("Reranker", app_name="maple").batch_stats
    before = stats.remote().result()
    with ThreadPoolExecutor(len(queries)) as pool:
        bodies = list(pool.map(lambda qd: post(server, "/v1/rerank", {"query": qd[0], "documents": qd[1]}).json(),
                               zip(queries, documents)))
    after = stats.remote().result()
    assert after["requests"] - before["requests"] == len(queries)
    for body, query, docs in zip(bodies, queries, documents):
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        np.testing.assert_allclose([got[i] for i in range(len(docs))], reranker.score(query, docs), atol=1e-4)


def test_responses_say_where_the_server_spent_the_time(server):
    """`Server-Timing` (W3C): `app` the ingress's whole time, `model` the part spent waiting on the model replica."""
    response = post(server, "/v1/embeddings", {"input": TEXTS[0]})
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(timing) == {"app", "model"} and 0 < float(timing["model"]) <= float(timing["app"])
    error = post(server, "/v1/embeddings", {"input": []})  # refused before any model call: no `model` part
    assert error.status_code == 422 and error.headers["server-timing"].startswith("app;dur=")


def test_cohere_v2_client_reranks_through_v2_rerank(server, reranker):
    """cohere.ClientV2 (Cohere's current client) calls POST /v2/rerank with string documents and a required model."""
    import cohere

    documents = ["a small red circle", "a large yellow diamond", "a small red circle above a blue square"]
    client = cohere.ClientV2(api_key=KEY, base_url=server, timeout=60)
    response = client.rerank(model="tiny-cross-encoder", query="a red circle", documents=documents, top_n=2)
    expected = reranker.score("a red circle", documents)
    order = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [r.index for r in response.results] == order
    np.testing.assert_allclose([r.relevance_score for r in response.results], [expected[i] for i in order],
                               atol=1e-4)
    with pytest.raises(cohere.errors.NotFoundError, match="not served here"):
        client.rerank(model="rerank-v3.5", query="a red circle", documents=documents)
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server).rerank(model="tiny-cross-encoder", query="q",
                                                                documents=["d"])


def test_rerank_takes_image_documents(server, reranker, corpus):
    images = [decode_image(png) for _, png in corpus_images(corpus, 2)]
    body = post(server, "/v1/rerank", {"query": "a red circle", "documents": [{"image": data_url(i)} for i in images],
                                       "return_documents": False}).json()
    scores = {r["index"]: r["relevance_score"] for r in body["results"]}
    np.testing.assert_allclose([scores[0], scores[1]], reranker.score("a red circle", images), atol=1e-4)
    assert all("document" not in r or r["document"] is None for r in body["results"])


# --- search -------------------------------------------------------------------------------------------------------


def test_search_by_a_corpus_image_finds_it_first_with_cosine_one(server, corpus):
    (row_id, png), = corpus_images(corpus, 1)
    body = post(server, "/v1/search", {"query": {"image": data_url(decode_image(png))}, "top_k": 5,
                                       "modality": "image"}).json()
    assert body["data"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert row_id in [h["id"] for h in body["data"] if h["score"] > 1 - 1e-4]
    assert body["index_size"] == 48 and body["reranker"] is None and body["modality"] == "image"
    assert "captions" in body["data"][0]["payload"]
    assert body["data"][0]["document"] is None  # documents only when asked for


def test_search_returns_each_hits_document_when_asked(server, corpus):
    rows = {r["id"]: r for p in sorted(corpus.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    images = post(server, "/v1/search", {"query": TEXTS[0], "top_k": 3, "return_documents": True}).json()
    assert images["modality"] == "image"
    for hit in images["data"]:  # the indexed bytes themselves, as a data URL a browser shows
        assert hit["document"]["image"] == "data:image/png;base64," + base64.b64encode(rows[hit["id"]]["image"]
                                                                                        ).decode()
    captions = post(server, "/v1/search", {"query": TEXTS[0], "top_k": 3, "modality": "text",
                                           "return_documents": True}).json()
    for hit in captions["data"]:
        pair, k = hit["id"].split("#")
        assert hit["document"] == {"text": rows[pair]["captions"][int(k)]}


def test_with_both_indexes_a_text_finds_images_and_an_image_finds_captions(server, embedder, corpus):
    (_, png), = corpus_images(corpus, 1)
    by_text = post(server, "/v1/search", {"query": TEXTS[0], "top_k": 3}).json()
    by_image = post(server, "/v1/search", {"query": {"image": data_url(decode_image(png))}, "top_k": 3}).json()
    assert (by_text["modality"], by_image["modality"]) == ("image", "text")
    # every row's captions, the one whose image is broken too: a caption index reads no image
    texts = [c for p in sorted(corpus.glob("*.parquet"))
             for row in pq.read_table(p, columns=["captions"]).column("captions").to_pylist() for c in row]
    cosines = embedder.encode_texts(texts).numpy() @ embedder.encode_images([decode_image(png)]).numpy()[0]
    np.testing.assert_allclose([h["score"] for h in by_image["data"]], sorted(cosines, reverse=True)[:3], atol=1e-4)
    assert by_image["index_size"] == len(texts)
    assert requests.get(f"{server}/health", timeout=30).json()["indexes"] == {"image": 48, "text": len(texts)}


def test_search_scores_are_the_brute_force_top_k(server, embedder, corpus):
    rows = [r for p in sorted(corpus.glob("*.parquet")) for r in pq.read_table(p, columns=["id", "image"]).to_pylist()
            if r["id"] != "broken-0"]
    vectors = embedder.encode_images([decode_image(r["image"]) for r in rows]).numpy().astype(np.float64)
    query = embedder.encode_texts([TEXTS[1]]).numpy()[0].astype(np.float64)
    expected = sorted(vectors @ query, reverse=True)[:5]
    body = post(server, "/v1/search", {"query": TEXTS[1], "top_k": 5}).json()
    np.testing.assert_allclose([h["score"] for h in body["data"]], expected, atol=1e-4)


def test_search_with_rerank_orders_the_retrieved_candidates_by_the_reranker(server, reranker, corpus):
    body = post(server, "/v1/search", {"query": TEXTS[0], "top_k": 3, "rerank": True}).json()
    plain = post(server, "/v1/search", {"query": TEXTS[0], "top_k": LIMITS["rerank_depth"]}).json()
    rows = {r["id"]: r["image"] for p in sorted(corpus.glob("*.parquet"))
            for r in pq.read_table(p, columns=["id", "image"]).to_pylist()}
    depth_ids = [h["id"] for h in plain["data"]]
    expected = reranker.score(TEXTS[0], [decode_image(rows[i]) for i in depth_ids])
    best = sorted(range(len(depth_ids)), key=lambda i: -expected[i])[:3]
    assert [h["id"] for h in body["data"]] == [depth_ids[i] for i in best]
    np.testing.assert_allclose([h["rerank_score"] for h in body["data"]], [expected[i] for i in best], atol=1e-4)
    assert body["reranker"] == "tiny-cross-encoder:local"


# --- errors -------------------------------------------------------------------------------------------------------

PNG_200 = data_url(Image.new("RGB", (200, 200)))  # 40 000 pixels > 128 × 128
PNG_128 = data_url(Image.new("RGB", (128, 128), (40, 90, 200)))


@cache
def bomb() -> str:
    """A 4000 x 4000 PNG of one colour: a 75 KB data URL, 48 MB once decoded."""
    return data_url(Image.new("L", (4000, 4000)))


def eps() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="EPS")  # PIL would hand it to Ghostscript
    return "data:image/eps;base64," + base64.b64encode(buf.getvalue()).decode()


ERRORS = [
    ("/v1/embeddings", {"input": ["x"] * 9}, 413, "too_many_inputs"),
    ("/v1/embeddings", {"input": "x" * 201}, 413, "text_too_long"),
    ("/v1/embeddings", {"input": [{"image": PNG_200}]}, 413, "image_too_large"),
    ("/v1/embeddings", {"input": [{"image": "bm90IGFuIGltYWdl"}]}, 422, "invalid_image"),
    ("/v1/embeddings", {"input": [{"image": "%%%not base64"}]}, 422, "invalid_image"),
    ("/v1/embeddings", {"input": [{"image": "https://example.com/a.png"}]}, 422, "image_urls_disabled"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 422, "invalid_input"),
    ("/v1/embeddings", {"input": ["fine", "a lone \ud800 surrogate"]}, 422, "invalid_input"),
    ("/v1/embeddings", {"input": [{"image": PNG_128}] * 4}, 413, "too_many_pixels"),
    ("/v1/embeddings", {"input": [{"image": eps()}]}, 422, "invalid_image"),
    ("/v1/embeddings", {"input": [{"image": PNG_128[:300]}]}, 422, "invalid_image"),
    ("/v1/embeddings", {"input": []}, 422, "invalid_input"),
    ("/v1/embeddings", {"model": "gpt-4", "input": "x"}, 404, "model_not_found"),
    ("/v1/embeddings", {"input": "x", "dimensions": 65}, 422, "invalid_dimensions"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 422, "invalid_request"),
    ("/v1/embeddings", {"inputs": "x"}, 422, "invalid_request"),
    ("/v1/rerank", {"query": "x", "documents": ["d"] * 9}, 413, "too_many_inputs"),
    ("/v1/rerank", {"query": {"image": "@@"}, "documents": ["d"]}, 422, "invalid_image"),
    ("/v1/rerank", {"query": "x", "documents": "d"}, 422, "invalid_request"),
    ("/v1/search", {"query": "x", "top_k": 21}, 422, "top_k_too_large"),
    ("/v1/search", {"query": "x", "top_k": 0}, 422, "invalid_request"),
    ("/v1/search", {"query": 5}, 422, "invalid_input"),
    ("/v1/search", {"query": "x", "modality": "audio"}, 422, "invalid_request"),
]


@pytest.mark.parametrize("path,body,status,code", ERRORS, ids=[f"{e[0]}-{e[3]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_requests_get_4xx_with_an_error_body(server, path, body, status, code):
    response = post(server, path, body)
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (status, code)
    assert error["message"] and error["type"]


def test_a_body_over_the_limit_is_413(server):
    response = post(server, "/v1/embeddings", {"input": "x" * 250_000})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("key", [None, "wrong"])
def test_requests_without_the_key_are_401(server, key):
    response = post(server, "/v1/embeddings", {"input": "x"}, key=key)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_health_answers_without_a_key(server):
    assert requests.get(f"{server}/health", timeout=30).json()["status"] == "ok"


def test_the_search_page_needs_no_key_and_admits_only_its_own_script(server):
    """A browser cannot put a bearer token on a navigation: the page is open, the API it calls is not."""
    page = requests.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy and "connect-src 'self'" in policy
    assert requests.post(f"{server}/v1/search", json={"query": "x"}, timeout=30).status_code == 401


def test_unknown_routes_are_404_with_an_error_body(server):
    assert post(server, "/v1/chat/completions", {}).json()["error"]["code"] == "not_found"


def test_an_input_that_breaks_the_model_fails_only_its_caller_inside_a_shared_batch(server, embedder):
    """Straight to the Embedder (the ingress would refuse the text with 422): its batcher puts concurrent calls in
    one batch, and the failing chunk must come back to its caller alone."""
    from ray import serve

    from maple.serving.errors import ItemError

    handle = serve.get_deployment_handle("Embedder", app_name="maple")
    chunks = [[f"a small shape number {i}"] for i in range(10)]
    chunks[3], chunks[7] = ["fine", "a lone \ud800 surrogate"], ["\udfff"]
    stats = handle.batch_stats.remote().result()
    results = [r.result() for r in [handle.embed.remote(chunk) for chunk in chunks]]
    assert handle.batch_stats.remote().result()["batches"] - stats["batches"] < len(chunks)  # they shared batches
    assert [(r.index if isinstance(r, ItemError) else None) for r in results] == [None] * 3 + [1] + [None] * 3 + \
        [0] + [None] * 2
    for chunk, result in zip(chunks, results):
        if not isinstance(result, ItemError):
            np.testing.assert_allclose(result[0], embedder.encode_texts(chunk).numpy(), atol=1e-5)


def _bad_requests() -> list[tuple[str, str, dict]]:
    """Requests to /v1/embeddings bad in every way the probes of issue 17 found: (what, path, requests kwargs)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    raw = {**auth, "Content-Type": "application/json"}
    return [
        ("a text with a lone surrogate (`\\ud800` in the JSON)", "/v1/embeddings",
         dict(data=b'{"input": ["ok", "bad \\ud800 text"]}', headers=raw)),
        ("a 4000x4000 PNG (75 KB as a data URL, 48 MB decoded)", "/v1/embeddings",
         dict(json={"input": [{"image": bomb()}]}, headers=auth)),
        ("four 128x128 images (each within the limit, together over it)", "/v1/embeddings",
         dict(json={"input": [{"image": PNG_128}] * 4}, headers=auth)),
        ("malformed JSON", "/v1/embeddings", dict(data=b'{"input": ["unterminated', headers=raw)),
        ("a body that is not UTF-8", "/v1/embeddings", dict(data=b"\xff\xfe\x00garbage", headers=raw)),
        ("an EPS image", "/v1/embeddings", dict(json={"input": [{"image": eps()}]}, headers=auth)),
        ("a truncated PNG", "/v1/embeddings", dict(json={"input": [{"image": PNG_128[:300]}]}, headers=auth)),
        ("a body over the limit", "/v1/embeddings", dict(json={"input": "x" * 250_000}, headers=auth)),
        ("no API key", "/v1/embeddings", dict(json={"input": "x"}, headers={})),
        ("token ids instead of text", "/v1/embeddings", dict(json={"input": [[1, 2, 3]]}, headers=auth)),
        ("an image URL (fetching is off)", "/v1/embeddings",
         dict(json={"input": [{"image": "http://169.254.169.254/latest/meta-data"}]}, headers=auth)),
        ("a rerank query with a lone surrogate", "/v1/rerank",
         dict(json={"query": "bad \ud800", "documents": ["a"]}, headers=auth)),
        ("a search query that is a 4000x4000 PNG", "/v1/search",
         dict(json={"query": {"image": bomb()}}, headers=auth)),
    ]


def test_the_bad_requests_table_of_docs_security_md_is_what_the_server_answers(server):
    from tests.fixtures.doc_tables import check_section, markdown_table

    rows = []
    for what, path, kwargs in _bad_requests():
        response = requests.post(f"{server}{path}", timeout=60, **kwargs)
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
        rows.append([what, f"`{path}`", str(response.status_code), f"`{response.json()['error']['code']}`"])
    check_section("docs/security.md", "server probes", markdown_table(["bad request", "route", "status", "code"], rows),
                  "tests/serve/test_serve_app.py")


def test_32_clients_with_a_fifth_bad_requests_get_no_5xx_and_every_valid_answer(server, embedder, corpus):
    texts = [f"a small {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "diamond")]
    text_reference = embedder.encode_texts(texts).numpy()
    images = [decode_image(png) for _, png in corpus_images(corpus, 6)]
    image_urls = [data_url(image) for image in images]
    image_reference = embedder.encode_images(images).numpy()
    bad = _bad_requests()
    n_clients, per_client = 32, 5

    def valid(i: int):
        if i % 2:
            pick = [i % 6, (i + 1) % 6]
            return {"model": REGISTERED_NAME, "input": [{"image": image_urls[j]} for j in pick]}, image_reference[pick]
        return {"model": REGISTERED_NAME, "input": texts[i % len(texts)]}, text_reference[[i % len(texts)]]

    def client(c: int) -> list[tuple]:
        out = []
        for k in range(per_client):
            i = c * per_client + k
            started = time.perf_counter()
            if i % 5 == 4:  # a fifth of all requests, spread over every client
                kind, path, kwargs = bad[(i // 5) % len(bad)]
                response = requests.post(f"{server}{path}", timeout=60, **kwargs)
                out.append((kind, None, response, time.perf_counter() - started))
            else:
                body, expected = valid(i)
                response = post(server, "/v1/embeddings", body)
                out.append(("valid", expected, response, time.perf_counter() - started))
        return out

    from ray import serve

    stats = serve.get_deployment_handle("Embedder", app_name="maple").batch_stats
    before = stats.remote().result()
    started = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        results = [r for rs in pool.map(client, range(n_clients)) for r in rs]
    wall = time.perf_counter() - started
    after = stats.remote().result()
    # Only valid requests reach the model, and concurrent ones shared forward passes.
    n_inputs = sum(len(r[1]) for r in results if r[0] == "valid")
    assert after["inputs"] - before["inputs"] == n_inputs and after["batches"] - before["batches"] < n_inputs
    assert [r[0] for r in results if r[2].status_code >= 500] == []
    for kind, expected, response, _ in results:
        if kind == "valid":
            assert response.status_code == 200, response.text[:300]
            got = np.array([d["embedding"] for d in response.json()["data"]])
            np.testing.assert_allclose(got, expected, atol=1e-5)
        else:
            assert 400 <= response.status_code < 500, (kind, response.status_code, response.text[:300])
            assert set(response.json()["error"]) == {"message", "type", "code", "param"}, kind
    latencies = sorted(r[3] for r in results if r[0] == "valid")
    print(f"\nload: {len(results)} requests ({sum(r[0] != 'valid' for r in results)} bad) from {n_clients} clients "
          f"in {wall:.1f} s; valid p50 {latencies[len(latencies) // 2]:.2f} s, "
          f"p95 {latencies[int(len(latencies) * 0.95)]:.2f} s")


def test_the_pixel_budget_of_the_replica_is_free_after_the_load(server):
    """Every request gave its pixels back, whatever its fate: a new request of the largest size still fits at once."""
    response = requests.post(f"{server}/v1/embeddings", json={"input": [{"image": PNG_128}] * 3}, timeout=10,
                             headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
