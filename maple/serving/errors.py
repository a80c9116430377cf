"""The one error type of the HTTP API and its JSON body, `{"error": {"message", "type", "code", "param"}}`, the shape
OpenAI clients parse (Cohere and Jina clients read `message` from it too)."""

from __future__ import annotations

from typing import Any

# HTTP status -> OpenAI's error `type`.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable", 500: "internal_error"}


class ApiError(Exception):
    """A request the server refuses or cannot answer. `status` is the HTTP status; `code` a machine-readable word
    (`too_many_inputs`, `image_too_large`, `invalid_image`, ...); `param` the request field at fault (`input[3]`)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "internal_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)

    def __reduce__(self):  # keeps the fields when Ray moves the exception between processes
        return ApiError, (self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


class ItemError:
    """What a batched model call returns, as a value, for a caller whose input failed inside the batch: an exception
    raised by the batch would reach every caller in it (`maple.serving.batching.Batcher`, as `@serve.batch`), so the
    batch catches and returns it per caller.
    `index`: the failing input's position in that caller's chunk (None: the chunk as a whole)."""

    def __init__(self, index: int | None, message: str):
        self.index, self.message = index, message

    def to_api_error(self, offset: int = 0, param: str = "input") -> ApiError:
        """The HTTP error of the caller: 422 naming the input when one input fails alone; 500 otherwise (every input
        of the chunk works alone, so the failure is not the request's)."""
        if self.index is None:
            return ApiError(500, f"the model failed on this request ({self.message}); retry", "internal_error")
        where = f"{param}[{offset + self.index}]"
        return ApiError(422, f"{where} could not be embedded ({self.message})", "invalid_input", where)
