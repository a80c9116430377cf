"""A folder of images and a captions file (CSV, TSV or JSON Lines) -> raw rows (`maple.data.raw`), whatever the
file holds.

The layout is Hugging Face's `imagefolder` with metadata: a file `metadata.csv` / `metadata.jsonl` (or any
`.csv` / `.tsv` / `.jsonl` named by `data.path`) with one line per image or per caption, naming the image by its
path relative to the folder:

    file_name,caption
    beach/001.jpg,a dog on the sand
    beach/001.jpg,a brown dog at the sea

    {"file_name": "beach/002.jpg", "captions": ["two kites", "a red kite over the dunes"]}

Columns (FILE_COLUMNS, CAPTION_COLUMNS; the first one present is used): the file name, the caption (a JSON line may
hold a list of captions), and optionally `id` (default: the file name). Other columns are ignored. Lines naming the
same file are one pair with all their captions, in file order.

Accounting: one row per distinct file name, plus one row per line that cannot be used (a CSV record with a quoting
error that spans several lines is one such row): rows in = rows kept + rows quarantined. What is refused:
  - a file that does not open, or a CSV/TSV without a header naming a file and a caption column -> one
    `unreadable_shard` entry (`maple.stages.read` stops such an input before any work);
  - a CSV line with more or fewer fields than the header or a quoting error, a JSON line that does not parse or is
    not an object (`malformed_line`); a line without a file name (`missing_field:file_name`); a value of the wrong
    type (`wrong_type:*`); text that is not UTF-8 (`invalid_utf8:*`);
  - a file name that is absolute or holds a NUL (`bad_file_name`), an id holding '#', which maple's caption ids
    use as a separator (`bad_id`), a line whose id differs from the id an earlier line gave the same file
    (`conflicting_id`), an id already given to another file (`duplicate_id`);
  - an image that is missing, unreadable, too large or outside the folder: `maple.data.coco.read_image_files`,
    the image step of every captions-file reader.
No Ray here: `maple.stages.read` parses the captions file on the driver (text only) and maps `read_image_files`
over the rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from maple.data.raw import MAX_FILE_BYTES, UNREADABLE_SHARD, entry_row, mark, raw_row, text_field, utf8_text
from maple.data.validate import READER_REASON

# The captions file looked for in a folder given as data.path (Hugging Face's names first).
CAPTION_FILES = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv", "captions.tsv")
SUFFIXES = (".csv", ".tsv", ".jsonl")
# Column names accepted for each field, in order of preference.
ID_COLUMNS = ("id",)
FILE_COLUMNS = ("file_name", "filename", "image", "path")
CAPTION_COLUMNS = ("caption", "captions", "text")


def find_captions_file(path: str | Path) -> Path:
    """`data.path` -> the captions file: the path itself, or the one CAPTION_FILES entry its folder holds."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"data.path={path} does not exist: name the captions file (.csv, .tsv or .jsonl) or "
                                "the image folder that holds it")
    found = [path / name for name in CAPTION_FILES if (path / name).is_file()]
    if len(found) != 1:
        what = f"holds {', '.join(p.name for p in found)}" if found else f"holds none of {', '.join(CAPTION_FILES)}"
        raise FileNotFoundError(f"data.path={path} {what}; set data.path to the captions file itself")
    return found[0]


def _records(text: str, suffix: str) -> list[tuple[int, Any]]:
    """The file's lines as (line number, record): a dict for a JSON line or a CSV line with the header's field
    count (the header itself first, as a list), else the problem as a str."""
    records: list[tuple[int, Any]] = []
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as e:
                records.append((number, f"does not parse as JSON ({e})"))
                continue
            records.append((number, value if isinstance(value, dict) else
                            f"is a JSON {type(value).__name__}, expected an object"))
        return records
    # strict: a stray quote is an error, not the start of a field that swallows every line after it
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",", strict=True)
    header = None
    while True:
        first = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return records
        except csv.Error as e:  # the reader resumes at the next line
            lines = "does" if reader.line_num <= first else f"and the lines to {reader.line_num} do"
            records.append((first, f"{lines} not parse as CSV ({e}); check its quotes"))
            if reader.line_num < first:  # nothing consumed: cannot happen, but never loop forever
                return records
            continue
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line is no row
        if header is None:
            header = [f.strip() for f in fields]
            records.append((0, header))
            continue
        records.append((first, dict(zip(header, fields)) if len(fields) == len(header) else
                        f"has {len(fields)} fields, the header has {len(header)}"))


def _column(names: list[str], wanted: tuple[str, ...]) -> str | None:
    return next((n for n in wanted if n in names), None)


def _storable(value: str) -> tuple[str, bool]:
    """Text decoded with surrogateescape -> (it with each undecodable byte as one U+FFFD, whether it had none); a
    lone surrogate from a JSON escape is replaced the same way (`maple.data.raw.utf8_text`)."""
    try:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # the file's bytes, decoded
    except UnicodeEncodeError:
        return utf8_text(value)
    return text, text == value


def _text(value: Any, row: dict, field: str, where: str, integer_ok: bool = False) -> str | None:
    """A JSON/CSV value -> str (an integer id accepted); marks the row when it is not usable text."""
    return text_field(value, row, field, where, integer_ok=integer_ok, decode=_storable,
                      undecodable="is not valid UTF-8 (shown with U+FFFD); re-encode the file")


def _captions(value: Any, row: dict, where: str) -> list[str | None]:
    if value is None:
        return []
    if isinstance(value, list):
        return [_text(v, row, "captions", f"{where}[{k}]") for k, v in enumerate(value)]
    return [_text(value, row, "captions", where)]


def imagefolder_rows(captions_file: str | Path, source: str | None = None) -> list[dict]:
    """The captions file -> rows in `maple.data.coco.COCO_ITEMS_SCHEMA` (raw rows with a `file_name` to read the
    image from, which is not read here). `source` (default the file's path) fills every row's source."""
    path = Path(captions_file)
    source = source or str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        return [entry_row(source, UNREADABLE_SHARD, "is not a .csv, .tsv or .jsonl captions file")]
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise OSError(f"{path.stat().st_size} bytes, over the limit of {MAX_FILE_BYTES}")
        # utf-8-sig: spreadsheet programs start CSVs with a byte-order mark; bad bytes stay as lone surrogates,
        # which mark their row invalid_utf8 instead of failing the file
        text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    except OSError as e:
        return [entry_row(source, UNREADABLE_SHARD, f"cannot be read ({type(e).__name__}: {e})")]
    records = _records(text, suffix)
    if suffix != ".jsonl":
        if not records or not isinstance(records[0][1], list):
            return [entry_row(source, UNREADABLE_SHARD, "has no header line: it needs one naming the columns, e.g. "
                                                        "file_name,caption")]
        header = records.pop(0)[1]
        if _column(header, FILE_COLUMNS) is None or _column(header, CAPTION_COLUMNS) is None:
            return [entry_row(source, UNREADABLE_SHARD, f"has the header {header}: it needs a file name column "
                                                        f"({' or '.join(FILE_COLUMNS)}) and a caption column "
                                                        f"({' or '.join(CAPTION_COLUMNS)}); rename the columns")]
    rows: list[dict] = []
    by_file: dict[str, dict] = {}
    by_id: dict[str, str] = {}
    for number, record in records:
        where = f"{source} line {number}"
        row = raw_row(source=source, captions=[])
        if isinstance(record, str):
            mark(row, "malformed_line", f"{where} {record}")
            rows.append(row)
            continue
        names = list(record)
        file_col, caption_col = _column(names, FILE_COLUMNS), _column(names, CAPTION_COLUMNS)
        name = _text(record.get(file_col) if file_col else None, row, "file_name", f"{where}: {file_col}")
        name = name.strip() if name else name
        row_id = _text(record.get("id"), row, "id", f"{where}: id", integer_ok=True)
        row["captions"] = _captions(record.get(caption_col) if caption_col else None, row, f"{where}: {caption_col}")
        if not name:
            mark(row, "missing_field:file_name", f"{where} names no image (a {' or '.join(FILE_COLUMNS)} value)")
        elif "\0" in name or os.path.isabs(name):
            mark(row, "bad_file_name", f"{where}: {name!r} is absolute or holds a NUL; name the image relative to "
                                       "the image folder")
        row["id"] = row_id if row_id not in (None, "") else name
        if row["id"] and "#" in row["id"]:
            mark(row, "bad_id", f"{where}: id {row['id']!r} holds '#', which separates a caption's index in maple's "
                                "ids; rename the file or give the line an id")
        if row[READER_REASON] is not None:
            rows.append(row)
            continue
        first = by_file.get(name)
        if first is not None and first["id"] != row["id"]:
            mark(row, "conflicting_id", f"{where}: id {row['id']!r}, but an earlier line gave {name!r} the id "
                                        f"{first['id']!r}")
            rows.append(row)
        elif first is not None:
            first["captions"] += row["captions"]
        else:
            if row["id"] in by_id:
                mark(row, "duplicate_id", f"{where}: id {row['id']!r} already names {by_id[row['id']]!r}")
            else:
                by_id[row["id"]] = name
                by_file[name] = row
            row["file_name"] = name
            rows.append(row)
    return rows
