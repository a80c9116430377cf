"""Request inputs: what is accepted, the limits, and turning items into model inputs (text → `str`, image →
`PIL.Image`). No Ray here; the Serve ingress calls these before any model sees a request.

The rule for status codes: a request over a configured limit (body size, inputs per request, text length, image
pixels) is 413 `request_too_large`; a malformed one (wrong type, bad base64, undecodable image, refused URL) is 422.
Every message names the field at fault (`input[3]`, `documents[0]`) and the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from maple.data.images import ImageError, b64_to_bytes, decode_image
from maple.serving.config import ServeConfig
from maple.serving.errors import ApiError

Content = str | Image.Image  # what the models take: a text, or a decoded RGB image
_ITEM_HELP = 'a string, {"text": "..."} or {"image": "<data URL, base64 or http(s) URL>"}'


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_text_chars: int
    max_image_pixels: int
    max_body_bytes: int
    allow_image_urls: bool
    image_url_timeout_s: float = 10.0

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> Limits:
        return cls(cfg.max_inputs, cfg.max_text_chars, cfg.max_image_pixels, cfg.max_body_bytes,
                   cfg.allow_image_urls, cfg.image_url_timeout_s)


@dataclass(frozen=True)
class Input:
    """One request item, checked but not decoded: a text, or an image as base64 / data URL / http(s) URL."""

    kind: Literal["text", "image"]
    value: str
    param: str  # where it was in the request, for messages: "input[2]"

    @property
    def is_url(self) -> bool:
        return self.kind == "image" and self.value.lower().startswith(("http://", "https://"))


def parse_input(item: Any, limits: Limits, param: str) -> Input:
    """A str, {"text": str} or {"image": str} -> Input; 422 for anything else, 413 for a text over the limit."""
    if isinstance(item, str):
        kind, value = "text", item
    elif isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("text", "image"):
        kind, value = next(iter(item.items()))
        if not isinstance(value, str):
            raise ApiError(422, f"{param}.{kind} must be a string, got {type(value).__name__}", "invalid_input",
                           param)
    else:
        got = f"an object with keys {sorted(item)}" if isinstance(item, dict) else type(item).__name__
        hint = " (token ids are not accepted; send the text)" if isinstance(item, (int, list)) else ""
        raise ApiError(422, f"{param} must be {_ITEM_HELP}; got {got}{hint}", "invalid_input", param)
    if kind == "text" and len(value) > limits.max_text_chars:
        raise ApiError(413, f"{param} has {len(value)} characters; the limit is {limits.max_text_chars}",
                       "text_too_long", param)
    if kind == "image":
        lowered = value.lower()
        if "://" in lowered[:16] and not lowered.startswith(("http://", "https://")):
            raise ApiError(422, f"{param}: only data URLs, base64 and http(s) URLs are accepted", "invalid_image",
                           param)
        if lowered.startswith(("http://", "https://")) and not limits.allow_image_urls:
            raise ApiError(422, f"{param}: image URLs are not fetched by this server (serve.allow_image_urls is "
                                "false); send the image as a base64 data URL", "image_urls_disabled", param)
    return Input(kind, value, param)  # type: ignore[arg-type]


def parse_inputs(value: Any, limits: Limits, param: str = "input") -> list[Input]:
    """A single item or a non-empty list of at most `max_inputs` items -> [Input]."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ApiError(422, f"{param} is an empty list; send at least one item", "invalid_input", param)
    if len(items) > limits.max_inputs:
        raise ApiError(413, f"{param} has {len(items)} items; the limit is {limits.max_inputs} per request",
                       "too_many_inputs", param)
    many = isinstance(value, list)
    return [parse_input(item, limits, f"{param}[{i}]" if many else param) for i, item in enumerate(items)]


def decode_image_input(data: bytes | str, limits: Limits, param: str) -> Image.Image:
    """Encoded bytes, base64 or a data URL -> RGB image; 413 over `max_image_pixels`, 422 if it does not decode."""
    try:
        raw = b64_to_bytes(data) if isinstance(data, str) else data
        return decode_image(raw, max_pixels=limits.max_image_pixels)
    except ImageError as exc:
        if exc.reason == "too_large":
            raise ApiError(413, f"{param}: the image is too large ({exc.detail or exc.reason}); the limit is "
                                f"{limits.max_image_pixels} pixels", "image_too_large", param) from None
        raise ApiError(422, f"{param}: not a usable image ({exc})", "invalid_image", param) from None


async def fetch_image(url: str, limits: Limits, param: str) -> bytes:
    """Download an image URL (only called when `allow_image_urls`), refusing bodies over `max_body_bytes`."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=limits.image_url_timeout_s, follow_redirects=True) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ApiError(422, f"{param}: fetching {url} returned HTTP {response.status_code}",
                                   "image_fetch_failed", param)
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limits.max_body_bytes:
                        raise ApiError(413, f"{param}: {url} is larger than {limits.max_body_bytes} bytes",
                                       "image_too_large", param)
                return bytes(data)
    except httpx.HTTPError as exc:
        raise ApiError(422, f"{param}: fetching {url} failed ({type(exc).__name__}: {exc})", "image_fetch_failed",
                       param) from None


async def to_content(inputs: list[Input], limits: Limits) -> list[Content]:
    """Texts as they are; images fetched (URLs) and decoded off the event loop, so one large image does not stall
    the other requests of this replica."""

    async def one(item: Input) -> Content:
        if item.kind == "text":
            return item.value
        data: bytes | str = await fetch_image(item.value, limits, item.param) if item.is_url else item.value
        return await asyncio.to_thread(decode_image_input, data, limits, item.param)

    return list(await asyncio.gather(*(one(item) for item in inputs)))


# --- bearer-token auth -----------------------------------------------------------------------------------------


def key_digest(api_key: str | None) -> str | None:
    """What the server keeps of `MAPLE_API_KEY`: its SHA-256, so the key itself never travels into replicas."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else None


def check_bearer(authorization: str | None, digest: str | None) -> None:
    """`Authorization: Bearer <key>` must match when a key is configured; 401 otherwise (constant-time compare)."""
    if digest is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token: send the header `Authorization: Bearer <MAPLE_API_KEY>`",
                       "missing_api_key")
    if not hmac.compare_digest(key_digest(token.strip()) or "", digest):
        raise ApiError(401, "invalid API key", "invalid_api_key")
