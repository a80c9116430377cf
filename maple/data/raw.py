"""Raw rows: what every reader (Parquet, WebDataset, COCO, the synthetic world) yields before validation, and the
rows that stand for what a reader could not read.

The accounting rule of every reader: each row a shard holds comes out exactly once, as a raw row (validation then
keeps or quarantines it), and each part of a file that cannot be split into rows (a shard that does not open, the
damaged tail of a tar) comes out as one entry naming the file. So rows in = rows kept + rows quarantined, whatever
the input. A reader never raises on bad data: it marks the row (`_quarantine_reason`, with `_quarantine_detail`
saying what was found and where) and validation quarantines it.

No Ray here: the readers are functions of one file that `maple.stages.read` maps over a Ray Dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from maple.data.validate import READER_DETAIL, READER_REASON, storable_text

RAW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("captions", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("annotation", pa.string()),
        pa.field(READER_REASON, pa.string()),
        pa.field(READER_DETAIL, pa.string()),
    ]
)

# A member or image file above this many bytes is not read into memory: its row is quarantined (`file_too_large`).
# Far above any photo (a 64-megapixel PNG is ~200 MB only uncompressed); what it stops is a 10 GB member or a FIFO.
MAX_FILE_BYTES = 256 * 1024 * 1024

UNREADABLE_SHARD = "unreadable_shard"  # the file does not open as its format: no row of it could be read
DAMAGED_SHARD = "damaged_shard"  # the file opened, but its end is cut off or corrupt: the rows after that point


def raw_row(**values: Any) -> dict:
    """A raw row dict with every RAW_SCHEMA column (absent ones null)."""
    return {name: values.get(name) for name in RAW_SCHEMA.names}


def raw_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([raw_row(**r) for r in rows], schema=RAW_SCHEMA)


def entry_row(path: str, reason: str, detail: str) -> dict:
    """The raw row standing for the unreadable part of the file `path` (id null, source = the file)."""
    path = utf8_text(path)[0]
    return raw_row(source=path, **{READER_REASON: reason, READER_DETAIL: f"{path}: {detail}"})


def shard_entry(path: str, reason: str, detail: str) -> pa.Table:
    return raw_table([entry_row(path, reason, detail)])


def mark(row: dict, reason: str, detail: str) -> None:
    """Set a raw row's reason unless an earlier check already set one (the first problem found is the reason)."""
    if row.get(READER_REASON) is None:
        row[READER_REASON], row[READER_DETAIL] = reason, detail


def text_field(value: Any, row: dict, field: str, where: str, *, integer_ok: bool,
               decode: Callable[[str], tuple[str, bool]], undecodable: str) -> str | None:
    """A JSON / CSV value -> str (None stays None; an integer accepted where `integer_ok`), marking the row
    `wrong_type:<field>` when it is not text (the value kept as JSON, so the quarantine shows it) and
    `invalid_utf8:<field>` when `decode` had to replace characters (`undecodable` says what and how to fix it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, str) or (integer_ok and isinstance(value, int))):
        mark(row, f"wrong_type:{field}", f"{where} is {type(value).__name__}: {json.dumps(value)[:200]}")
        return json.dumps(value)
    text, ok = decode(str(value))
    if not ok:
        mark(row, f"invalid_utf8:{field}", f"{where} {undecodable}")
    return text


def utf8_text(value: str) -> tuple[str, bool]:
    """A str that Arrow can store -> (it, True); one holding lone surrogates (JSON's "\\ud800" escapes, tar names
    decoded with surrogateescape) -> (a copy with U+FFFD in their place, False)."""
    stored = storable_text(value)
    return stored, stored == value


def _binary_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_string(t):
        return pa.binary()
    if pa.types.is_large_list(t):
        return pa.large_list(_binary_type(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_binary_type(t.value_type))
    raise TypeError(f"not a string or list-of-string type: {t}")


def _decode(value: Any) -> tuple[Any, bool]:
    if value is None:
        return None, True
    if isinstance(value, list):
        decoded = [_decode(v) for v in value]
        return [d for d, _ in decoded], all(ok for _, ok in decoded)
    try:
        return value.decode("utf-8"), True
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace"), False


def valid_utf8(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[int]]:
    """A string or list<string> column as stored in a Parquet file (Arrow does not check UTF-8 when reading one)
    -> (the column with every invalid sequence replaced by U+FFFD, the row indices that held one)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    try:
        array.validate(full=True)
        return array, []
    except pa.ArrowInvalid:
        pass
    decoded = [_decode(v) for v in array.view(_binary_type(array.type)).to_pylist()]
    bad = [i for i, (_, ok) in enumerate(decoded) if not ok]
    return pa.array([d for d, _ in decoded], array.type), bad
