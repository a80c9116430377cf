"""Request inputs: what is accepted, the limits, and turning items into model inputs (text → `str`, image →
`PIL.Image`). No Ray here; the Serve ingress calls these before any model sees a request.

The rule for status codes: a request over a configured limit (body size, inputs per request, text length, image
pixels, the request's pixels) is 413 `request_too_large`; a malformed one (wrong type, a text that is not Unicode
text, bad base64, undecodable image, refused URL) is 422. Every message names the field at fault (`input[3]`,
`documents[0]`) and the limit. All of it is checked here, before any model sees the request, so that one bad input
never reaches a batch shared with other requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from maple.data.images import ImageError, b64_to_bytes, decode_image, image_size
from maple.serving.config import ServeConfig
from maple.serving.errors import ApiError
from maple.serving.pixels import PixelBudget
from maple.serving.urls import fetch_image

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
    max_request_pixels: int = ServeConfig.model_fields["max_request_pixels"].default

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> Limits:
        return cls(cfg.max_inputs, cfg.max_text_chars, cfg.max_image_pixels, cfg.max_body_bytes,
                   cfg.allow_image_urls, cfg.image_url_timeout_s, cfg.max_request_pixels)


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
    try:  # a JSON "\ud800" escape parses to a lone surrogate, which no tokenizer (or UTF-8) takes
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"{param} is not Unicode text: a lone surrogate at character {exc.start} (an unpaired "
                            "\\ud800-\\udfff escape); send UTF-8 text", "invalid_input", param) from None
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


def _too_large(param: str, detail: str, limits: Limits) -> ApiError:
    return ApiError(413, f"{param}: the image is too large ({detail}); the limit is {limits.max_image_pixels} pixels",
                    "image_too_large", param)


def _unusable(param: str, exc: Exception) -> ApiError:
    return ApiError(422, f"{param}: not a usable image ({exc})", "invalid_image", param)


def image_pixels(data: bytes, limits: Limits, param: str) -> int:
    """The pixels an encoded image will decode to, from its header only; 413 over `max_image_pixels`, 422 if the
    header is not an accepted image format."""
    try:
        width, height = image_size(data)
    except ImageError as exc:
        raise (_too_large(param, exc.detail, limits) if exc.reason == "too_large" else _unusable(param, exc)) from None
    if width * height > limits.max_image_pixels:
        raise _too_large(param, f"{width}x{height} = {width * height} pixels", limits)
    return width * height


def decode_image_input(data: bytes | str, limits: Limits, param: str) -> Image.Image:
    """Encoded bytes, base64 or a data URL -> RGB image; 413 over `max_image_pixels`, 422 if it does not decode."""
    try:
        raw = b64_to_bytes(data) if isinstance(data, str) else data
        return decode_image(raw, max_pixels=limits.max_image_pixels)
    except ImageError as exc:
        if exc.reason == "too_large":
            raise _too_large(param, exc.detail or exc.reason, limits) from None
        raise _unusable(param, exc) from None


async def _image_bytes(inputs: list[Input], limits: Limits) -> dict[int, bytes]:
    """{position: encoded bytes} of the image inputs: base64 decoded, URLs fetched (all of a request's fetches
    together at most `max_body_bytes`, the most its body could have carried inline)."""
    found: dict[int, bytes] = {}
    fetched = 0
    for i, item in enumerate(inputs):
        if item.kind != "image":
            continue
        if item.is_url:
            found[i] = await fetch_image(item.value, item.param, max_bytes=limits.max_body_bytes - fetched,
                                         timeout_s=limits.image_url_timeout_s)
            fetched += len(found[i])
        else:
            try:
                found[i] = b64_to_bytes(item.value)
            except ImageError as exc:
                raise _unusable(item.param, exc) from None
    return found


@asynccontextmanager
async def decoded(inputs: list[Input], limits: Limits, budget: PixelBudget | None = None
                  ) -> AsyncIterator[list[Content]]:
    """The inputs as model inputs (texts as they are, images decoded to RGB off the event loop), held for the block.

    Before anything is decoded: every image's size is read from its header (413 over `max_image_pixels`), their
    sum must fit `max_request_pixels` (413), and the request then holds that many pixels of the replica's `budget`
    until the block ends (waiting for its share while other requests hold the rest)."""
    data = await _image_bytes(inputs, limits)
    sizes = {i: image_pixels(raw, limits, inputs[i].param) for i, raw in data.items()}
    total = sum(sizes.values())
    if total > limits.max_request_pixels:
        raise ApiError(413, f"the request's {len(sizes)} images hold {total} pixels; the limit is "
                            f"{limits.max_request_pixels} per request (serve.max_request_pixels): send fewer or "
                            "smaller images per request", "too_many_pixels", "input")
    budget = budget or PixelBudget(limits.max_request_pixels, wait_s=0)
    async with budget.reserve(total):
        images = await asyncio.gather(*(asyncio.to_thread(decode_image_input, raw, limits, inputs[i].param)
                                        for i, raw in data.items()))
        by_position = dict(zip(data, images))
        yield [by_position.get(i, item.value) for i, item in enumerate(inputs)]


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
