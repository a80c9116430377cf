"""HTTP plumbing of the API, without Ray: the request guard (bearer auth, body-size limit) that runs before FastAPI
parses anything, and the exception handlers that turn every failure into `{"error": {...}}` JSON."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from maple.section import SetupError
from maple.serving.errors import ApiError, error_body
from maple.serving.inputs import check_bearer

logger = logging.getLogger(__name__)
# Liveness probes need no key, nor does the search page: it is static, and a browser cannot put a bearer token on a
# navigation; the API calls it makes carry the key typed into it.
OPEN_PATHS = ("/health", "/")


def check_port_free(host: str, port: int) -> None:
    """Refuse, before Ray starts, to serve on a port that something already listens on (Serve's proxy would fail to
    bind it later, in a log the user does not see). SO_REUSEADDR as the proxy's own server sets it, so a port that
    an earlier server left in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise SetupError(f"serve.port={port} is in use on {host} (another server, or an earlier `maple serve` "
                             f"still running); stop it or choose another port, e.g. serve.port={port + 1}") from None


# Per request: milliseconds the ingress spent waiting on model replicas (a dict, so that the tasks a route spawns add to
# the request's own), reported with the ingress's total in the `Server-Timing` response header.
_MODEL_MS: ContextVar[dict[str, float] | None] = ContextVar("maple_model_ms", default=None)


@contextmanager
def model_timer() -> Iterator[None]:
    """Count the block's wall time as the request's `model` time in its `Server-Timing` header."""
    start, timings = time.perf_counter(), _MODEL_MS.get()
    try:
        yield
    finally:
        if timings is not None:
            timings["model"] = timings.get("model", 0.0) + 1000 * (time.perf_counter() - start)


def server_timing(app_ms: float, timings: dict[str, float]) -> bytes:
    """The `Server-Timing` header (W3C): `app` the ingress from request to response, `model` its model calls."""
    parts = [f"app;dur={app_ms:.1f}"] + [f"{name};dur={ms:.1f}" for name, ms in timings.items()]
    return ", ".join(parts).encode("latin-1")


@dataclass(frozen=True)
class GuardSettings:
    max_body_bytes: int
    api_key_digest: str | None
    loopback_only: bool = False  # no key and not `insecure`: clients beyond loopback get 401


def is_loopback_client(client: tuple[str, int] | None) -> bool:
    """The ASGI scope's client (the peer of the proxy's socket, not a header a client could forge)."""
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0].split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware: 401 without the bearer token (when one is configured), 401 for a client beyond loopback
    when no key is configured (unless `insecure`), 413 for a body over the limit — judged on Content-Length when
    sent and on the bytes actually received otherwise (chunked uploads). Every response it lets through carries a
    `Server-Timing` header: where the request's time went inside the server (bench/serve_load.py reads it)."""

    def __init__(self, app, settings: Callable[[], GuardSettings]):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        settings = self.settings()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            if scope.get("path", "") not in OPEN_PATHS:
                if settings.loopback_only and not is_loopback_client(scope.get("client")):
                    raise ApiError(401, "this server has no API key (MAPLE_API_KEY is unset) and serves loopback "
                                        "clients only; its operator must set MAPLE_API_KEY (or serve.insecure=true)",
                                   "api_key_not_configured")
                check_bearer(headers.get("authorization"), settings.api_key_digest)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
                raise _too_large(int(length), settings.max_body_bytes)
        except ApiError as exc:
            return await _send_error(send, exc)

        received = 0
        refused = False  # the body went over the limit: the 413 is sent, the app's own response is dropped

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > settings.max_body_bytes:
                    refused = True
                    await _send_error(send, _too_large(received, settings.max_body_bytes, at_least=True))
                    return {"type": "http.disconnect"}  # the app stops reading, as if the client had gone
            return message

        timings: dict[str, float] = {}
        _MODEL_MS.set(timings)

        async def guarded_send(message):
            if refused:
                return
            if message["type"] == "http.response.start":
                header = (b"server-timing", server_timing(1000 * (time.perf_counter() - start), timings))
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise


def _too_large(size: int, limit: int, at_least: bool = False) -> ApiError:
    return ApiError(413, f"request body {'over ' if at_least else ''}{size} bytes exceeds the limit of {limit} bytes "
                         "(serve.max_body_bytes)", "body_too_large")


async def _send_error(send, exc: ApiError) -> None:
    body = json.dumps(exc.body()).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """FastAPI's error list -> one readable line and the first field at fault (`input`, `top_k`)."""
    parts, param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        param = param or (where if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    """Every error the API returns has the `{"error": {message, type, code, param}}` shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return JSONResponse(error_body(422, message, "invalid_request", param), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, str(exc.detail), code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(500, f"internal error ({type(exc).__name__}); see the replica's log",
                                       "internal_error"), status_code=500)
