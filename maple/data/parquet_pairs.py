"""One Parquet shard of image-text pairs -> raw rows (`maple.data.raw`), whatever the shard holds.

Each shard is mapped to the pair fields by its own schema (shards written by different tools may name their
columns differently, see PARQUET_COLUMNS). What is refused, and how it is counted (rows in = rows out):
  - a file that does not open as Parquet (truncated: its footer is at the end; not Parquet; unreadable) -> one
    `unreadable_shard` entry naming the file;
  - a shard without a column for id, image or captions, or with one of a type maple cannot read -> every row of it,
    with its id where the id column reads, as `missing_column:<field>` / `wrong_column_type:<field>`;
  - a row group that fails to decode (a corrupt page; a page checksum that does not match, when the writer stored
    checksums) -> each of its rows not yet read, as `unreadable_row_group`;
  - a string that is not valid UTF-8 (Arrow does not check when reading Parquet) -> that row, `invalid_utf8:<field>`.
No Ray here: `maple.stages.read` maps `read_parquet_shard` over the shard list.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from maple.data.raw import RAW_SCHEMA, UNREADABLE_SHARD, entry_row, raw_table, shard_entry, valid_utf8
from maple.data.schema import PAIRS_SCHEMA
from maple.data.validate import READER_DETAIL, READER_REASON
from maple.section import SetupError

# Parquet column names accepted for each field, in order of preference (PAIRS_SCHEMA's own name first).
PARQUET_COLUMNS = {
    "id": ("id", "key", "image_id"),
    "image": ("image", "jpg", "png", "image_bytes"),
    "captions": ("captions", "caption", "text"),
    "source": ("source",),
    "annotation": ("annotation",),
}
REQUIRED = ("id", "image", "captions")
BATCH_ROWS = 512  # rows per batch read (image bytes: a batch is a few MB to tens of MB)


class ShardSchemaError(ValueError):
    """A shard whose columns cannot be read as pairs; `reason` is the quarantine reason of its rows."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def parquet_mapping(schema: pa.Schema, file: str) -> dict[str, str]:
    """{field: column} for one shard's schema; ShardSchemaError naming the file for a missing or mistyped column."""
    mapping: dict[str, str] = {}
    for field, names in PARQUET_COLUMNS.items():
        found = next((n for n in names if n in schema.names), None)
        if found is None:
            if field in REQUIRED:
                raise ShardSchemaError(
                    f"missing_column:{field}",
                    f"{file}: no column for {field!r} (looked for {', '.join(names)}); the shard has columns "
                    f"{schema.names}. Rename the column or convert the shard to maple.data.schema.PAIRS_SCHEMA.")
            continue
        t = schema.field(found).type
        ok = {
            "id": _is_text(t) or pa.types.is_integer(t),
            # Hugging Face `datasets` stores images as struct<bytes: binary, path: string>.
            "image": _is_bytes(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                                      and _is_bytes(t.field("bytes").type)),
            "captions": _is_text(t) or ((pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)),
            "source": _is_text(t),
            "annotation": _is_text(t),
        }[field]
        if not ok:
            raise ShardSchemaError(
                f"wrong_column_type:{field}",
                f"{file}: column {found!r} ({field}) has type {t}, which maple cannot read as {field}; expected "
                f"{PAIRS_SCHEMA.field(field).type}. Convert the column or the shard to maple.data.schema.PAIRS_SCHEMA.")
        mapping[field] = found
    return mapping


def check_columns(files: list[str], key: str, fs: pafs.FileSystem | None = None) -> None:
    """Refuse, before any read, an input where no shard has columns for id, image and captions (captions written
    under other column names, or another tool's shards): the reader would quarantine every row. Shards are probed in
    order until one maps, so a good input costs one footer; a shard that does not open is the reader's to report."""
    refused = None
    for file in files:
        try:
            schema = pq.read_schema(file, filesystem=fs)
        except (OSError, pa.ArrowException):
            continue
        try:
            parquet_mapping(schema, file)
            return
        except ShardSchemaError as exc:
            refused = refused or exc
    if refused is not None:
        raise SetupError(f"{key}: none of its {len(files)} shards can be read as image-text pairs: {refused}")


def _array(column: pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def raw_from_parquet(table: pa.Table, mapping: dict[str, str], path: str, first_row: int = 0) -> pa.Table:
    """A batch of a shard's columns -> raw rows. `first_row`: the batch's first row number in the file (for details);
    the shard path fills `source` where the shard has no source column or a row's source is null."""
    n = table.num_rows
    table = table.combine_chunks()
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    columns = {}
    for field in ("id", "captions", "source", "annotation"):
        if field not in mapping:
            continue
        column = _array(table[mapping[field]])
        if _is_text(column.type) or pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column, bad = valid_utf8(column)
            for i in bad:
                if reasons[i] is None:
                    reasons[i] = f"invalid_utf8:{field}"
                    details[i] = (f"{path} row {first_row + i}: column {mapping[field]!r} is not valid UTF-8 (shown "
                                  "with U+FFFD); re-encode the shard's text as UTF-8")
        columns[field] = column
    image = _array(table[mapping["image"]])
    if pa.types.is_struct(image.type):
        image = pc.struct_field(image, "bytes")
    captions = columns["captions"]
    if _is_text(captions.type):  # one caption per row -> a list of one
        captions = pa.array([None if c is None else [c] for c in captions.to_pylist()], pa.list_(pa.string()))
    source = pa.array([path] * n, pa.string())
    if "source" in columns:  # a source written by an earlier conversion wins; the shard path fills the gaps
        source = pc.coalesce(columns["source"].cast(pa.string()), source)
    annotation = columns["annotation"] if "annotation" in columns else pa.nulls(n, pa.string())
    return pa.Table.from_arrays(
        [columns["id"].cast(pa.string()), image.cast(pa.binary()), captions.cast(pa.list_(pa.string())),
         source, annotation.cast(pa.string()), pa.array(reasons, pa.string()), pa.array(details, pa.string())],
        schema=RAW_SCHEMA)


def _row_ids(pf: pq.ParquetFile, row_group: int, id_column: str | None) -> list | None:
    """A row group's ids (None where the id is not text or an integer, or there is no id column) when a column of it
    still reads with as many rows as the footer says; None when none does (the footer's count is not to be trusted)."""
    size = pf.metadata.row_group(row_group).num_rows
    try:
        column = pf.read_row_group(row_group, columns=[id_column or pf.schema_arrow.names[0]]).column(0)
    except Exception:  # noqa: BLE001 - a corrupt page or footer, any type
        return None
    if len(column) != size:
        return None
    if id_column is None or not (_is_text(column.type) or pa.types.is_integer(column.type)):
        return [None] * size
    return valid_utf8(column.cast(pa.string()))[0].to_pylist()


def _lost_rows(pf: pq.ParquetFile, row_group: int, skip: int, path: str, first_row: int, reason: str, detail: str,
               id_column: str | None) -> pa.Table:
    """The rows of a row group from `skip` on, which could not be read as pairs: one raw row each, with its id, when
    the row group's ids still read; otherwise one entry for the row group (how many rows it held is unknown)."""
    ids = _row_ids(pf, row_group, id_column)
    size = pf.metadata.row_group(row_group).num_rows
    if ids is None:
        return raw_table([entry_row(path, reason, f"row group {row_group} (rows {first_row}.. by the footer, which "
                                                  f"says {size - skip} more): {detail}")])
    return raw_table([{"id": ids[i], "source": path, READER_REASON: reason,
                       READER_DETAIL: f"{path} row {first_row + i - skip}: {detail}"} for i in range(skip, size)])


def read_parquet_shard(path: str, fs: pafs.FileSystem, source_from_path: bool = False) -> Iterator[pa.Table]:
    """Yield raw-row tables (RAW_SCHEMA) for every row of the shard at `path` (see the module docstring for what
    is refused). `source_from_path`: every row's source is the shard, whatever a source column says."""
    try:
        pf = pq.ParquetFile(fs.open_input_file(path), page_checksum_verification=True)
        meta = pf.metadata
        sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
        schema = pf.schema_arrow
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        yield shard_entry(path, UNREADABLE_SHARD, f"does not open as Parquet ({type(e).__name__}: {e}); the file "
                                                  "may be truncated or not Parquet: rewrite it or remove it")
        return
    id_column = next((n for n in PARQUET_COLUMNS["id"] if n in schema.names), None)
    try:
        mapping = parquet_mapping(schema, path)
    except ShardSchemaError as e:
        start = 0
        for k, size in enumerate(sizes):
            yield _lost_rows(pf, k, 0, path, start, e.reason, str(e).removeprefix(f"{path}: "), id_column)
            start += size
        return
    if source_from_path:
        mapping.pop("source", None)
    columns = sorted(set(mapping.values()))
    start = 0
    for k, size in enumerate(sizes):
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[k], columns=columns,
                                         use_threads=False):
                table = pa.Table.from_batches([batch])
                yield raw_from_parquet(table, mapping, path, start + done)
                done += table.num_rows
            if done != size:
                raise ValueError(f"the footer says {size} rows, {done} were read")
        except Exception as e:  # noqa: BLE001 - a corrupt page surfaces as OSError, ArrowInvalid, ValueError ...
            if done < size:
                problem = f"row group {k} does not decode ({type(e).__name__}: {e}); rewrite the shard"
                yield _lost_rows(pf, k, done, path, start + done, "unreadable_row_group", problem, id_column)
        start += size
