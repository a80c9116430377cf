"""The maple server: a Ray Serve application of four deployments behind one HTTP API.

    Api (FastAPI ingress) ──► Embedder  (batched: texts and images of many requests in one forward pass)
                          ├─► Reranker  (batched: the pairs of many requests in one pass)
                          └─► Search    (ANN indexes over a corpus, one per modality, built by jobs/index.py)

Routes (docs/serving.md): POST /v1/embeddings (OpenAI), POST /v1/rerank (Cohere v1/Jina), POST /v2/rerank
(Cohere v2), POST /v1/search,
GET /v1/models, GET /health, and GET / (the search page: static, over the same API). The logic the routes call
(schemas, limits, auth, model loading, the page) is in `maple.serving`; this file only places it in deployments and
composes them through handles.

Run: `serve run serve/config.yaml` (or `serve deploy` to a cluster), `python -m serve.app --config recipe.yaml
serve.embedder=models:/maple/1` (`maple serve`), or in Python `serve.run(build_app({...}))`.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations after Serve pickles the class, where
# string annotations no longer resolve (bodies then parse as query parameters).
import asyncio
import ipaddress
import logging
import os
import socket
import sys
import time
import uuid

import numpy as np
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from maple.serving.api import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankRequestV2,
    RerankResponse,
    RerankResponseV2,
    RerankResult,
    RerankResultV2,
    RerankUsage,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Usage,
    encode_embedding,
    index_for,
    truncate_dimensions,
)
from maple.serving.batching import Batcher
from maple.serving.config import ServeConfig
from maple.serving.errors import ApiError, ItemError
from maple.serving.http import GuardSettings, RequestGuard, check_port_free, install_error_handlers, model_timer
from maple.serving.inputs import Content, Limits, decoded, key_digest, parse_input, parse_inputs
from maple.serving.page import search_page
from maple.serving.pixels import PixelBudget
from maple.serving.placement import check_fits, cpu_shares, serve_cpus

logger = logging.getLogger("maple.serve")
app = FastAPI(title="maple", summary="Image-text embeddings, reranking and search")
install_error_handlers(app)


def _guard_settings() -> GuardSettings:
    # The middleware is built inside the ingress replica; its settings come from that replica's constructor.
    return serve.get_replica_context().servable_object.guard


app.add_middleware(RequestGuard, settings=_guard_settings)


# Module functions that the deployments call are defined above them: Serve pickles a deployment class by value when
# it is decorated, with the module globals that exist at that moment.
def _warn_no_key(insecure: bool) -> None:
    if insecure:
        logger.warning("AUTH IS OFF: MAPLE_API_KEY is not set and serve.insecure=true, so every client that reaches "
                       "this server may use it. Set MAPLE_API_KEY where the application is built.")
    else:
        logger.warning("MAPLE_API_KEY is not set: the API answers loopback clients (127.0.0.1, ::1) only and refuses "
                       "every other client with 401. Set MAPLE_API_KEY, or serve.insecure=true to serve all.")


def _total_inputs(chunks: list[list[Content]]) -> int:
    return sum(len(chunk) for chunk in chunks)


async def _call_once_more_if_lost(method, payload):
    """A model replica call, sent once more when its replica died or could not be reached under it (its node lost:
    RayActorError, ActorDiedError and ActorUnavailableError alike); Serve's router then picks a live replica.
    Embedding and scoring are idempotent, so a second call is safe (docs/cluster.md, "When a node dies")."""
    try:
        return await method.remote(payload)
    except RayActorError as exc:
        logger.warning("a model replica failed (%s); retrying the call once", type(exc).__name__)
        return await method.remote(payload)


def _set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class BatchStats:
    """What a model replica's batches held: their ratio is the mean executed batch (bench/serve_load.py)."""

    def __init__(self):
        self.batches = self.inputs = self.requests = 0
        self.forward_s = 0.0

    def add(self, inputs: int, requests: int, seconds: float) -> None:
        self.batches, self.inputs, self.requests = self.batches + 1, self.inputs + inputs, self.requests + requests
        self.forward_s += seconds

    def as_dict(self) -> dict:
        import torch

        return {"batches": self.batches, "inputs": self.inputs, "requests": self.requests, "forward_s": self.forward_s,
                "torch_threads": torch.get_num_threads()}


# Each replica's logical CPUs are set by build_app from serve.num_cpus (maple/serving/placement.py), so that the
# defaults fit the machine they start on; a Serve config's `ray_actor_options` overrides them.
@serve.deployment(max_ongoing_requests=64)
class Embedder:
    """The embedding model; concurrent calls are batched by input count, up to `max_batch_size` inputs."""

    def __init__(self, spec: str | None, device: str | None, tracking_uri: str | None, max_batch_size: int,
                 batch_wait_timeout_s: float, torch_threads: int | None = None):
        from maple.serving.models import load_served_embedder  # torch loads only in model replicas

        _set_torch_threads(torch_threads)
        self.model, self.card = load_served_embedder(spec, device, tracking_uri)
        self.batcher = Batcher(self._run, max_batch_size, batch_wait_timeout_s, size_of=len)
        self.stats = BatchStats()

    def model_card(self) -> ModelCard:
        return self.card

    def batch_stats(self) -> dict:
        """Batches run since start, the inputs and calls they held, and their forward seconds."""
        return self.stats.as_dict()

    async def embed(self, chunk: list[Content]) -> tuple[np.ndarray, list[int]] | ItemError:
        """One chunk of a request's inputs (at most max_batch_size, cut by the Api) -> (vectors, token counts), or
        its own ItemError when one of its inputs fails the model (`embed_chunks`): the batch's other callers are
        unaffected."""
        return await self.batcher(chunk)

    async def _run(self, chunks: list[list[Content]]) -> list[tuple[np.ndarray, list[int]] | ItemError]:
        from maple.serving.models import embed_chunks

        start = time.perf_counter()
        # In a thread: the replica keeps receiving calls, which queue for the next batch, while this one runs.
        out = await asyncio.to_thread(embed_chunks, self.model, chunks)
        self.stats.add(_total_inputs(chunks), len(chunks), time.perf_counter() - start)
        return out


@serve.deployment(max_ongoing_requests=32)
class Reranker:
    """The reranker (`maple.models.reranker`): `score(query, candidates)` for each batched (query, candidates)."""

    def __init__(self, spec: str | None, device: str | None, tracking_uri: str | None, max_batch_size: int,
                 batch_wait_timeout_s: float, torch_threads: int | None = None):
        from maple.serving.models import load_served_reranker

        _set_torch_threads(torch_threads)
        self.model, self.card = load_served_reranker(spec, device, tracking_uri)
        self.batcher = Batcher(self._run, max_batch_size, batch_wait_timeout_s)
        self.stats = BatchStats()

    def model_card(self) -> ModelCard:
        return self.card

    def batch_stats(self) -> dict:
        """Batches run since start, the requests they held (`inputs` counts requests here), their forward seconds."""
        return self.stats.as_dict()

    async def rerank(self, request: tuple[Content, list[Content]]) -> list[float] | ItemError:
        """One request's (query, documents) -> its scores; concurrent requests' pairs run together (`score_each`)."""
        return await self.batcher(request)

    async def _run(self, requests: list[tuple[Content, list[Content]]]) -> list[list[float] | ItemError]:
        from maple.serving.models import score_each

        start = time.perf_counter()
        out = await asyncio.to_thread(score_each, self.model, requests)
        self.stats.add(len(requests), len(requests), time.perf_counter() - start)
        return out


@serve.deployment(max_ongoing_requests=64)
class Search:
    """The corpus indexes of jobs/index.py, one per modality: ids, cosine scores, payloads (and content to rerank,
    documents to show)."""

    def __init__(self, folders: list[str]):
        from maple.serving.search_index import load_indexes

        self.indexes = load_indexes(folders)

    def info(self) -> dict[str, dict]:
        """modality -> the index's manifest and size; empty without an index."""
        return {modality: dict(index.manifest, size=index.size) for modality, index in self.indexes.items()}

    async def search(self, modality: str, query: np.ndarray, k: int, with_content: bool,
                     with_documents: bool = False) -> list[dict]:
        from maple.data.images import decode_image

        hits = await asyncio.to_thread(self.indexes[modality].search, query, k, with_content, with_documents)
        for hit in hits:
            if isinstance(hit.get("content"), bytes):
                hit["content"] = decode_image(hit["content"])
        return hits


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Api:
    """The HTTP ingress: checks requests (maple.serving.inputs), then composes the deployments."""

    async def __init__(self, embedder: DeploymentHandle, reranker: DeploymentHandle, search: DeploymentHandle,
                       config: dict, api_key_digest: str | None):
        self.cfg = ServeConfig.model_validate(config)
        self.limits = Limits.from_config(self.cfg)
        self.pixels = PixelBudget(self.cfg.max_replica_pixels, self.cfg.pixel_budget_wait_s)
        self.guard = GuardSettings(self.cfg.max_body_bytes, api_key_digest,
                                   loopback_only=api_key_digest is None and not self.cfg.insecure)
        if api_key_digest is None:
            _warn_no_key(self.cfg.insecure)
        self.embedder, self.reranker, self.search_index = embedder, reranker, search
        self.embedder_card, self.reranker_card, self.index_info = await asyncio.gather(
            embedder.model_card.remote(), reranker.model_card.remote(), search.info.remote())
        for modality, info in self.index_info.items():
            if info["dim"] != self.embedder_card.dimensions:
                raise ValueError(f"the {modality} index of {self.cfg.index} holds {info['dim']}-d vectors of "
                                 f"{info.get('embedder')!r} but the served embedder {self.embedder_card.source!r} "
                                 f"gives {self.embedder_card.dimensions}-d: rebuild the index with this embedder "
                                 "(python -m jobs.index serve.embedder=...)")

    # --- helpers -----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_model(requested: str | None, card: ModelCard) -> None:
        if requested is not None and requested not in (card.id, f"{card.id}:{card.version}"):
            raise ApiError(404, f"model {requested!r} is not served here; this server runs {card.id!r} "
                                f"(version {card.version}); see GET /v1/models", "model_not_found", "model")

    async def _embed_chunk(self, chunk: list[Content]):
        return await _call_once_more_if_lost(self.embedder.embed, chunk)

    async def _embed(self, contents: list[Content], param: str = "input") -> tuple[np.ndarray, list[int]]:
        size = self.cfg.max_batch_size
        with model_timer():
            parts = await asyncio.gather(*(self._embed_chunk(contents[i:i + size])
                                           for i in range(0, len(contents), size)))
        for k, part in enumerate(parts):
            if isinstance(part, ItemError):
                raise part.to_api_error(offset=k * size, param=param)
        return np.concatenate([p[0] for p in parts]), [n for p in parts for n in p[1]]

    async def _rerank(self, query: Content, documents: list[Content]) -> list[float]:
        with model_timer():
            scores = await _call_once_more_if_lost(self.reranker.rerank, (query, documents))
        if isinstance(scores, ItemError):
            raise scores.to_api_error(param="documents")
        return scores

    # --- routes --------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page(self) -> HTMLResponse:
        """The search page (maple/serving/page.py); served without a key, its requests carry the key."""
        html, headers = search_page()
        return HTMLResponse(html, headers=headers)

    @app.get("/health")
    def health(self) -> dict:
        sizes = {modality: info["size"] for modality, info in self.index_info.items()}
        return {"status": "ok", "embedder": self.embedder_card.id, "reranker": self.reranker_card.id,
                "index_size": sum(sizes.values()), "indexes": sizes}

    @app.get("/v1/models")
    def models(self) -> ModelList:
        return ModelList(data=[self.embedder_card, self.reranker_card])

    @app.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingRequest) -> EmbeddingResponse:
        self._check_model(body.model, self.embedder_card)
        if body.dimensions is not None and body.dimensions > (self.embedder_card.dimensions or 0):
            raise ApiError(422, f"dimensions={body.dimensions} exceeds the model's embedding size "
                                f"{self.embedder_card.dimensions}", "invalid_dimensions", "dimensions")
        async with decoded(parse_inputs(body.input, self.limits, "input"), self.limits, self.pixels) as contents:
            vectors, tokens = await self._embed(contents)
        vectors = truncate_dimensions(vectors, body.dimensions)
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=encode_embedding(v, body.encoding_format))
                  for i, v in enumerate(vectors)],
            model=self.embedder_card.id, model_version=self.embedder_card.version,
            usage=Usage(prompt_tokens=sum(tokens), total_tokens=sum(tokens)))

    @app.post("/v1/rerank")
    async def rerank(self, body: RerankRequest) -> RerankResponse:
        self._check_model(body.model, self.reranker_card)
        query = parse_input(body.query, self.limits, "query")
        documents = parse_inputs(body.documents, self.limits, "documents")
        async with decoded([query, *documents], self.limits, self.pixels) as (query_content, *doc_contents):
            scores = await self._rerank(query_content, doc_contents)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:body.top_n]
        results = [RerankResult(index=i, relevance_score=scores[i],
                                document={documents[i].kind: documents[i].value} if body.return_documents else None)
                   for i in order]
        return RerankResponse(model=self.reranker_card.id, model_version=self.reranker_card.version, results=results,
                              usage=RerankUsage(documents=len(documents)))

    @app.post("/v2/rerank")
    async def rerank_v2(self, body: RerankRequestV2) -> RerankResponseV2:
        """Cohere's v2 route (`cohere.ClientV2`): the v1 ranking in the v2 shape."""
        ranked = await self.rerank(RerankRequest(model=body.model, query=body.query, documents=body.documents,
                                                 top_n=body.top_n, return_documents=False))
        return RerankResponseV2(
            id=str(uuid.uuid4()), results=[RerankResultV2(index=r.index, relevance_score=r.relevance_score)
                                           for r in ranked.results],
            meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
            model=ranked.model, model_version=ranked.model_version)

    @app.post("/v1/search")
    async def search(self, body: SearchRequest) -> SearchResponse:
        self._check_model(body.model, self.embedder_card)
        if not self.index_info:
            raise ApiError(503, "no index is served: build one with `python -m jobs.index` and set the "
                                "application's `index` argument", "no_index")
        if body.top_k > self.cfg.max_top_k:
            raise ApiError(422, f"top_k={body.top_k} exceeds the limit {self.cfg.max_top_k} (serve.max_top_k)",
                           "top_k_too_large", "top_k")
        query = parse_input(body.query, self.limits, "query")
        modality = index_for(self.index_info, body.modality, query.kind)
        depth = max(body.top_k, self.cfg.rerank_depth) if body.rerank else body.top_k
        async with decoded([query], self.limits, self.pixels) as (query_content,):
            vectors, _ = await self._embed([query_content], param="query")
            hits = await self.search_index.search.remote(modality, vectors[0], depth, body.rerank,
                                                         body.return_documents)
            if body.rerank and hits:
                scores = await self._rerank(query_content, [h.pop("content") for h in hits])
                for hit, score in zip(hits, scores):
                    hit["rerank_score"] = score
                hits.sort(key=lambda h: -h["rerank_score"])
        return SearchResponse(data=[SearchHit(**h) for h in hits[:body.top_k]], model=self.embedder_card.id,
                              model_version=self.embedder_card.version,
                              reranker=f"{self.reranker_card.id}:{self.reranker_card.version}" if body.rerank
                              else None, modality=modality, index_size=self.index_info[modality]["size"])


def build_app(args: dict | None = None) -> Application:
    """The application builder named in serve/config.yaml (`import_path: serve.app:build_app`).

    args: ServeConfig keys (embedder, reranker, index, limits, batching); an unknown key is an error. The bearer
    key is read from MAPLE_API_KEY where the application is built; only its SHA-256 reaches the replicas. Without a
    key the API serves loopback clients only, unless `insecure: true` (docs/security.md).
    """
    try:
        cfg = ServeConfig.model_validate(dict(args or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"serve.app:build_app args (the application's `args:` in the Serve config): {problems}; "
                         f"known keys: {sorted(ServeConfig.model_fields)}") from None
    digest = key_digest(os.environ.get("MAPLE_API_KEY"))
    if digest is None:
        _warn_no_key(cfg.insecure)
    cpus = cpu_shares(serve_cpus(cfg.num_cpus, _cluster_cpus()))

    def placed(deployment, num_gpus: float = 0.0):
        return deployment.options(ray_actor_options={"num_cpus": cpus[deployment.name], "num_gpus": num_gpus})

    embedder = placed(Embedder, cfg.num_gpus).bind(cfg.embedder, cfg.device, cfg.mlflow_tracking_uri,
                                                   cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.torch_threads)
    reranker = placed(Reranker, cfg.num_gpus).bind(cfg.reranker, cfg.device, cfg.mlflow_tracking_uri,
                                                   cfg.rerank_max_batch_size, cfg.batch_wait_timeout_s,
                                                   cfg.torch_threads)
    return placed(Api).bind(embedder, reranker, placed(Search).bind(cfg.index_folders), cfg.model_dump(), digest)


def _cluster_cpus() -> float | None:
    """The connected Ray's logical CPUs; None before Ray is connected."""
    import ray

    return ray.cluster_resources().get("CPU", 0.0) if ray.is_initialized() else None


def is_loopback_host(host: str) -> bool:
    """True when every address `host` names is a loopback address (a name is resolved)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


def check_exposure(host: str, has_key: bool, insecure: bool) -> None:
    """Refuse to listen beyond loopback without a key unless told to (`--insecure`)."""
    if has_key or is_loopback_host(host):
        return
    if not insecure:
        raise SystemExit(f"refusing to serve on {host} without MAPLE_API_KEY: anyone who reaches {host} could use "
                         "the models. Export MAPLE_API_KEY, serve on 127.0.0.1, or pass --insecure "
                         "(serve.insecure=true) to serve without a key.")
    print(f"WARNING: serving on {host} WITHOUT AUTH (--insecure): anyone who reaches it can use the API",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """`maple serve [--insecure] [--open] --config recipe.yaml serve.embedder=...`: the application on this
    machine's Ray, blocking. `--insecure` is `serve.insecure=true`; `--open` opens the search page in a browser
    where there is a display."""
    from maple.runtime import init_ray, parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    insecure, open_page = "--insecure" in argv, "--open" in argv
    cfg = parse_config([a for a in argv if a not in ("--insecure", "--open")],
                       "Serve embeddings, reranking and search over HTTP (Ray Serve), and the search page at /. "
                       "--insecure: serve beyond loopback without MAPLE_API_KEY. --open: open the search page in "
                       "a browser (where there is a display).")
    cfg.serve.insecure = cfg.serve.insecure or insecure
    check_exposure(cfg.serve.host, bool(os.environ.get("MAPLE_API_KEY")), cfg.serve.insecure)
    check_port_free(cfg.serve.host, cfg.serve.port)
    init_ray(cfg.run)
    serve_blocking(cfg, open_page)


def page_url(host: str, port: int) -> str:
    """The search page's address for a browser on this machine (a wildcard host is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def has_display() -> bool:
    """A browser can open a window here: macOS or Windows, or an X11 / Wayland display."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def serve_blocking(cfg, open_page: bool = False) -> None:
    """Deploy the application on the connected Ray and block until Ctrl-C (`maple serve`, `maple demo --serve`);
    `main` has checked the host (`check_exposure`). `open_page`: open the search page where there is a display
    (headless, the address printed is all)."""
    import ray

    check_fits(serve_cpus(cfg.serve.num_cpus, _cluster_cpus()), ray.available_resources().get("CPU", 0.0),
               _cluster_cpus())
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(cfg.serve.model_dump()), name="maple", route_prefix="/")
    url = page_url(cfg.serve.host, cfg.serve.port)
    print(f"maple is serving on {url.rstrip('/')} (docs/serving.md); Ctrl-C stops it\n"
          f"search page: {url}", flush=True)
    if open_page and has_display():
        import webbrowser

        webbrowser.open(url)  # returns False when no browser can be started; the address is printed anyway
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
