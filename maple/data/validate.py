"""Validation of image-text pairs: split a batch into rows that conform to PAIRS_SCHEMA and quarantine rows.

A pure batch function (no Ray): `validate_pairs(batch, cfg, stage)` is what `maple.stages.read.validated` maps over
a Ray Dataset, and it runs the same on a dict of Python lists in a test or a notebook. It never raises on bad data:
every input row comes out exactly once, either good or quarantined with a reason.

Input columns (the readers' raw rows): `id`, `image` (encoded bytes), `captions` (list of str; a lone str is read
as one caption), `source`, and optionally `annotation` (str; a dict is stored as JSON), `_quarantine_reason` (set
by a reader that already knows a row is unusable, e.g. `missing_file`) and `_quarantine_detail` (what the reader
found, naming the file; kept in the quarantine row). Other columns are ignored.

Checks, in order, the first failure naming the row's reason:
  - a reader's `_quarantine_reason`;
  - `missing_field:<name>` (column absent, value null, or an empty id) and `wrong_type:<name>`;
  - `invalid_utf8:<name>`: an id, caption or source holding lone surrogates, which Arrow cannot store;
  - `duplicate_id`: the id of a good row earlier in this batch (the first good occurrence is kept; ids repeated
    across batches are not visible to a batch function);
  - `empty_caption`: no caption left once blank ones are removed (a blank string is the absence of a caption, so
    blank entries beside real captions are dropped, not quarantined); `caption_too_long`: a caption longer than
    `cfg.max_caption_chars` (the whole row goes: such text is usually scraped debris, not a caption);
  - the image, through `maple.data.images.decode_image_detailed` (reasons `empty`, `corrupt`, `too_large`,
    `too_small`, `extreme_aspect_ratio`, `unsupported_mode`, ...), last because decoding is the expensive check.
Good images keep their bytes when they are plain RGB PNG/JPEG; otherwise (palette, alpha, CMYK, greyscale,
16-bit, EXIF-rotated, other formats) the converted RGB image is re-encoded as PNG and `image_format` says so.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from maple.data.config import DataConfig
from maple.data.images import ImageError, decode_image_detailed, encode_image, image_limits
from maple.data.schema import PAIRS_SCHEMA, QUARANTINE_SCHEMA

PAIRS_COLUMNS = PAIRS_SCHEMA.names
QUARANTINE_COLUMNS = QUARANTINE_SCHEMA.names
READER_REASON = "_quarantine_reason"  # the column a reader sets for a row it already knows is unusable
READER_DETAIL = "_quarantine_detail"  # what the reader found and where (file, member, row), for the quarantine row


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail


def _num_rows(batch: dict[str, Any]) -> int:
    lengths = {len(v) for v in batch.values()}
    if len(lengths) > 1:
        raise ValueError(f"validate_pairs: columns have different lengths {sorted(lengths)}")  # a caller bug
    return lengths.pop() if lengths else 0


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))  # pandas writes NaN for a missing value


def _plain(value: Any) -> Any:
    """numpy scalars/arrays (Ray's "numpy" batches) -> Python values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_utf8(value: str, name: str) -> str:
    """A str holding lone surrogates (a JSON "\\ud800" escape) cannot be stored as Arrow's UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _Reject(f"invalid_utf8:{name}", str(e)) from None
    return value


def storable_text(value: str) -> str:
    """`value` with lone surrogates replaced by U+FFFD, so that Arrow can store it (a quarantined row's id, a reader's
    text from JSON escapes or tar names decoded with surrogateescape)."""
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _check_id(value: Any) -> str:
    if _is_null(value):
        raise _Reject("missing_field:id")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = str(int(value))  # COCO ids are integers
    if not isinstance(value, str):
        raise _Reject("wrong_type:id", f"{type(value).__name__}")
    if not value.strip():
        raise _Reject("missing_field:id", "empty id")
    return _check_utf8(value, "id")


def _check_captions(value: Any, max_chars: int) -> list[str]:
    if _is_null(value):
        raise _Reject("missing_field:captions")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _Reject("wrong_type:captions", f"{type(value).__name__}")
    captions = []
    for c in value:
        if _is_null(c):
            continue
        if not isinstance(c, str):
            raise _Reject("wrong_type:captions", f"a caption is {type(c).__name__}")
        c = _check_utf8(c.strip(), "captions")
        if len(c) > max_chars:
            raise _Reject("caption_too_long", f"{len(c)} characters > max_caption_chars {max_chars}")
        if c:
            captions.append(c)
    if not captions:
        raise _Reject("empty_caption", f"{len(value)} caption(s), all blank")
    return captions


def _check_text(value: Any, name: str, required: bool) -> str | None:
    if _is_null(value):
        if required:
            raise _Reject(f"missing_field:{name}")
        return None
    if name == "annotation" and isinstance(value, dict):
        return json.dumps(value)
    if not isinstance(value, str):
        raise _Reject(f"wrong_type:{name}", f"{type(value).__name__}")
    return _check_utf8(value, name)


def _row_json(row: dict[str, Any], detail: str) -> str:
    """The row's non-binary fields (and the image's size) as JSON, so that a quarantined row loses nothing
    but its pixels."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            out[f"{key}_bytes"] = len(value)
        elif key not in (READER_REASON, READER_DETAIL):
            out[key] = value
    if detail:
        out["detail"] = detail
    # ensure_ascii: a lone surrogate in a rejected value stays an escape, which Arrow can store
    return json.dumps(out, default=str, ensure_ascii=True)


def validate_pairs(batch: dict[str, list | np.ndarray], cfg: DataConfig, stage: str
                   ) -> tuple[dict[str, list], dict[str, list]]:
    """Split a column batch into (good, quarantine) column dicts.

    batch: {column: list | np.ndarray}, n rows (see the module docstring for the columns read).
    Returns `good` with exactly PAIRS_SCHEMA's columns and `quarantine` with exactly QUARANTINE_SCHEMA's columns
    (`stage` is recorded in every quarantine row); len(good rows) + len(quarantine rows) == n.
    """
    n = _num_rows(batch)
    limits = image_limits(cfg)
    good: dict[str, list] = {c: [] for c in PAIRS_COLUMNS}
    bad: dict[str, list] = {c: [] for c in QUARANTINE_COLUMNS}
    seen: set[str] = set()
    for i in range(n):
        row = {k: _plain(v[i]) for k, v in batch.items()}
        try:
            if not _is_null(row.get(READER_REASON)):
                detail = row.get(READER_DETAIL)
                raise _Reject(str(row[READER_REASON]), "" if _is_null(detail) else str(detail))
            for name in ("id", "image", "captions", "source"):
                if name not in batch:
                    raise _Reject(f"missing_field:{name}", f"no column {name!r} in the batch")
            row_id = _check_id(row["id"])
            if row_id in seen:
                raise _Reject("duplicate_id", "a good row with this id appears earlier in this batch")
            captions = _check_captions(row["captions"], cfg.max_caption_chars)
            source = _check_text(row["source"], "source", required=True)
            annotation = _check_text(row.get("annotation"), "annotation", required=False)
            data = row["image"]
            if _is_null(data):
                raise _Reject("missing_field:image")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise _Reject("wrong_type:image", f"{type(data).__name__}")
            data = bytes(data)
            try:
                decoded = decode_image_detailed(data, **limits)
            except ImageError as e:
                raise _Reject(e.reason, e.detail) from None
        except _Reject as r:
            rid, src = row.get("id"), row.get("source")
            bad["id"].append(None if _is_null(rid) else storable_text(str(rid)))
            bad["source"].append(storable_text(src) if isinstance(src, str) else None)
            bad["stage"].append(stage)
            bad["reason"].append(r.reason)
            bad["row"].append(_row_json(row, r.detail))
            continue
        if decoded.converted:
            data, fmt = encode_image(decoded.image, "png"), "png"
        else:
            fmt = decoded.format
        seen.add(row_id)
        good["id"].append(row_id)
        good["image"].append(data)
        good["image_format"].append(fmt)
        good["captions"].append(captions)
        good["source"].append(source)
        good["annotation"].append(annotation)
    return good, bad
