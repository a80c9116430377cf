"""A COCO/Flickr-style captions JSON and its image folder -> raw rows (`maple.data.raw`), whatever the JSON holds.

One row per entry of `images` (its captions grouped from `annotations`, in file order), plus one row per image id
that annotations name but `images` does not (`unknown_image_id`) and one per annotation that names no image at all
(`malformed_annotation`). So rows in = len(images) + the annotations that attach to no image, and each comes out
kept or quarantined. What is refused:
  - a JSON that does not parse or is not {"images": [...], "annotations": [...]} -> one `unreadable_shard` entry;
  - an image entry without `id` / `file_name` (`missing_field:*`), with one of the wrong type (`wrong_type:*`), a
    file name with a NUL, an absolute path, or one that leads outside the image root once symlinks are resolved
    (`bad_file_name`), a caption that is not a string (`wrong_type:captions`) or holds a lone surrogate escape
    (`invalid_utf8:*`);
  - an image file that is missing (`missing_file`), unreadable (`unreadable_file`) or over MAX_FILE_BYTES.
No Ray here: `maple.stages.read` parses the JSON on the driver (metadata only) and maps `read_image_files` over the
rows.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from maple.data.images import image_files
from maple.data.raw import MAX_FILE_BYTES, RAW_SCHEMA, UNREADABLE_SHARD, entry_row, mark, raw_row, text_field, utf8_text
from maple.data.validate import READER_DETAIL, READER_REASON
from maple.section import SetupError

# The rows `coco_rows` returns: raw rows without the image, with the file name to read it from.
COCO_ITEMS_SCHEMA = RAW_SCHEMA.remove(RAW_SCHEMA.get_field_index("image")).append(pa.field("file_name", pa.string()))


def _valid_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _text(value: Any, row: dict, field: str, where: str) -> str | None:
    """A JSON id / file name / caption -> str (integers accepted for ids); marks the row when it is not usable."""
    return text_field(value, row, field, where, integer_ok=field == "id", decode=utf8_text,
                      undecodable="holds a lone surrogate escape (not a character)")


def _image_row(k: int, img: Any, where: str, source: str) -> dict:
    row = raw_row(source=source)
    if not isinstance(img, dict):
        mark(row, "malformed_entry", f"{where}: images[{k}] is {type(img).__name__}, expected an object with "
                                     "'id' and 'file_name'")
        return row
    row["id"] = _text(img.get("id"), row, "id", f"{where}: images[{k}].id")
    row["file_name"] = _text(img.get("file_name"), row, "file_name", f"{where}: images[{k}].file_name")
    for field in ("id", "file_name"):
        if row[field] is None:
            mark(row, f"missing_field:{field}", f"{where}: images[{k}] has no {field!r}")
    name = row["file_name"]
    if isinstance(name, str) and ("\0" in name or os.path.isabs(name)):
        mark(row, "bad_file_name", f"{where}: images[{k}].file_name {name!r} is absolute or holds a NUL")
    return row


def coco_rows(captions_json: str | Path, source: str | None = None) -> list[dict]:
    """The JSON at `captions_json` -> rows in COCO_ITEMS_SCHEMA (images are not read here); a file that does not
    parse -> one entry row naming it."""
    source = source or str(captions_json)
    try:
        data = json.loads(Path(captions_json).read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise ValueError("expected an object with 'images' and 'annotations' lists")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return [entry_row(source, UNREADABLE_SHARD, f"not a COCO captions JSON ({type(e).__name__}: {e}); fix or "
                                                    "replace the file")]
    captions: dict[str, list] = defaultdict(list)
    caption_problems: dict[str, tuple[str, str]] = {}
    orphans: list[dict] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _valid_id(ann.get("image_id")):
            row = raw_row(source=source)
            mark(row, "malformed_annotation", f"{source}: annotations[{k}] names no image (it needs an 'image_id' "
                                              f"string or integer): {json.dumps(ann)[:200]}")
            orphans.append(row)
            continue
        probe = raw_row()
        caption = _text(ann.get("caption"), probe, "captions", f"{source}: annotations[{k}].caption")
        image_id = utf8_text(str(ann["image_id"]))[0]
        captions[image_id].append(caption)
        if probe[READER_REASON] is not None:
            caption_problems.setdefault(image_id, (probe[READER_REASON], probe[READER_DETAIL]))
    rows, seen = [], set()
    for k, img in enumerate(data["images"]):
        row = _image_row(k, img, source, source)
        if isinstance(img, dict) and _valid_id(img.get("id")):
            seen.add(row["id"])
            row["captions"] = captions.get(row["id"], [])
            if row["id"] in caption_problems:
                mark(row, *caption_problems[row["id"]])
        rows.append(row)
    for image_id, caps in captions.items():
        if image_id not in seen:
            row = raw_row(id=image_id, captions=caps, source=source)
            mark(row, "unknown_image_id", f"{source}: annotations name image_id {image_id!r}, which no image has")
            rows.append(row)
    return rows + orphans


def _inside(root: str, name: str, local: bool) -> str | None:
    """The path of `name` under `root`, or None when it leads outside (by '..', or by a symlink on a local disk)."""
    if local:
        real_root = os.path.realpath(root)
        path = os.path.realpath(os.path.join(real_root, name))
        return path if os.path.commonpath([path, real_root]) == real_root and path != real_root else None
    path = os.path.normpath(os.path.join(root, name))  # object stores have no symlinks
    return path if path.startswith(root.rstrip("/") + "/") else None


def check_image_root(rows: list[dict], fs: pafs.FileSystem, image_root: str, probe: int = 8) -> None:
    """Refuse, before any image is read, an image folder that cannot be the one the captions JSON's file names are
    relative to: none of the first `probe` images it names (`coco_rows` rows) is there. A few missing files are the
    quarantine's business (`missing_file`), not this check's."""
    local = isinstance(fs, pafs.LocalFileSystem)
    names = [row["file_name"] for row in rows if row.get("file_name") and row[READER_REASON] is None][:probe]
    for name in names:
        path = _inside(image_root, name, local)
        if path is not None and fs.get_file_info(path).type == pafs.FileType.File:
            return
    if names:
        empty = local and not image_files(image_root, limit=1)
        raise SetupError(f"data.image_root={image_root} {'holds no images' if empty else 'is not the image folder'}: "
                         f"none of the first {len(names)} files the captions JSON names (e.g. {names[0]!r}) is there; "
                         "set data.image_root to the folder its file_name entries are relative to")


def read_image_files(table: pa.Table, fs: pafs.FileSystem, image_root: str) -> pa.Table:
    """Map stage over `coco_rows` rows: read each row's image file under `image_root` (never outside it); a file
    that is missing, outside or unreadable marks the row, never fails the batch. Returns RAW_SCHEMA."""
    local = isinstance(fs, pafs.LocalFileSystem)
    rows = table.to_pylist()
    for row in rows:
        name = row.pop("file_name")
        row["image"] = None
        if row[READER_REASON] is not None or name is None:
            continue
        path = _inside(image_root, name, local)
        if path is None:
            mark(row, "bad_file_name", f"{name!r} leads outside data.image_root={image_root!r}")
            continue
        try:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                mark(row, "missing_file", f"{path} does not exist")
            elif info.type != pafs.FileType.File:
                mark(row, "unreadable_file", f"{path} is not a regular file")
            elif info.size > MAX_FILE_BYTES:
                mark(row, "file_too_large", f"{path} is {info.size} bytes, over the limit of {MAX_FILE_BYTES}")
            else:
                with fs.open_input_file(path) as f:
                    row["image"] = f.read()
        except (OSError, ValueError) as e:
            mark(row, "unreadable_file", f"{path}: {type(e).__name__}: {e}")
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
