"""One WebDataset tar shard -> raw rows (`maple.data.raw`), whatever the tar holds.

WebDataset's convention: a sample is the run of consecutive members sharing a key (the member path up to the first
"." of its file name), each member one field named by its extension (`s0.jpg`, `s0.txt`, `s0.json`). The image is
the first of jpg/jpeg/png/webp; captions are the non-blank lines of the .txt / .text, then the .json's "captions"
list or "caption" string. Members whose name has no extension, directories and links belong to no sample.

We read the tar ourselves (Python's tarfile, random access) rather than through `ray.data.read_webdataset`: Ray
builds its blocks through pandas, where a sample missing an extension carries NaN (not None) depending on how
many samples share a block, which follows the CPU count; and one bad shard fails Ray's whole read.

What is refused, and how it is counted (rows in = rows out):
  - a file that does not open as a tar -> one `unreadable_shard` entry naming the file;
  - a tar whose data ends early (truncated) or whose next header is corrupt: tarfile stops at that point, and the
    bytes after the last member it read are not the end-of-archive zero blocks -> one `damaged_shard` entry for
    the rest of the file, naming the sample that was being read (it may lack members, so it is not kept);
  - per sample: a .txt that is not UTF-8 (`corrupt_text`), a .json that does not parse (`corrupt_json`) or whose
    captions are not strings (`wrong_type:captions`), the same extension twice (`duplicate_member`), a member over
    MAX_FILE_BYTES (`file_too_large`); validation then checks the rest (a missing image or caption, the image).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from maple.data.raw import (
    DAMAGED_SHARD,
    MAX_FILE_BYTES,
    UNREADABLE_SHARD,
    entry_row,
    mark,
    raw_row,
    raw_table,
    shard_entry,
    utf8_text,
)
from maple.data.validate import READER_DETAIL, READER_REASON

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "text")
SAMPLES_PER_TABLE = 256
_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")  # WebDataset's (and Ray's) split: "a/b.seg.png" -> a/b


def webdataset_row(key: str, url: str, members: dict[str, bytes]) -> dict:
    """One sample ({extension: bytes}, extensions lower-case, the full one such as "seg.png" kept) -> a raw row."""
    key, key_ok = utf8_text(key)
    row = raw_row(id=key, source=url)
    if not key_ok:
        mark(row, "invalid_utf8:id", f"{url}: the member names of sample {key!r} are not valid UTF-8")
    by_ext = {ext.rsplit(".", 1)[-1]: data for ext, data in members.items()}
    row["image"] = next((by_ext[k] for k in IMAGE_KEYS if k in by_ext), None)
    captions: list | None = None
    try:
        for ext in TEXT_KEYS:
            if ext in by_ext:
                lines = [line for line in by_ext[ext].decode("utf-8").splitlines() if line.strip()]
                captions = (captions or []) + lines
        if "json" in by_ext:
            meta = json.loads(by_ext["json"])
            found = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
            if isinstance(found, str):
                found = [found]
            if isinstance(found, list):
                captions = (captions or []) + [c for c in found if c not in (captions or [])]
            elif found is not None:
                mark(row, "wrong_type:captions", f"{url}: {key}.json has captions of type {type(found).__name__}")
    except UnicodeDecodeError as e:
        mark(row, "corrupt_text", f"{url}: a text member of sample {key!r} is not UTF-8 ({e})")
    except json.JSONDecodeError as e:
        mark(row, "corrupt_json", f"{url}: {key}.json does not parse ({e})")
    if captions is not None:
        if not all(c is None or isinstance(c, str) for c in captions):
            mark(row, "wrong_type:captions", f"{url}: {key}.json has captions that are not strings")
            captions = [None if c is None else json.dumps(c) if not isinstance(c, str) else c for c in captions]
        cleaned = [None if c is None else utf8_text(c) for c in captions]
        if not all(ok for _, ok in filter(None, cleaned)):
            mark(row, "invalid_utf8:captions", f"{url}: {key}.json has a caption with a lone surrogate escape")
        captions = [None if c is None else c[0] for c in cleaned]
    row["captions"] = captions
    return row


def _end_is_clean(f: pa.NativeFile, offset: int) -> bool:
    """After the last member, a tar holds only zero bytes (two 512-byte end-of-archive blocks and padding); fewer
    than one block, or anything else, means the file was cut or corrupted there."""
    size = f.size()
    if size - offset < tarfile.BLOCKSIZE:
        return False
    f.seek(offset)
    while chunk := f.read(1 << 20):
        if chunk.count(0) != len(chunk):
            return False
    return True


class _Damaged(Exception):
    def __init__(self, detail: str, key: str | None):
        super().__init__(detail)
        self.detail, self.key = detail, key


def _samples(tar: tarfile.TarFile, f: pa.NativeFile, path: str) -> Iterator[tuple[str, dict[str, bytes], dict]]:
    """(key, {extension: bytes}, problem) per sample, in file order; _Damaged where the file stops being a tar (the
    sample being read then is not yielded: it may lack members)."""
    key: str | None = None
    members: dict[str, bytes] = {}
    problem: dict = {}  # the first problem found while reading a sample's members
    try:
        for info in tar:
            match = _KEY_AND_EXT.match(info.name) if info.isfile() else None
            if match is None:
                continue  # directories, links, names without an extension: fields of no sample
            name, ext = match.group(1), match.group(2).lower()
            if name != key:
                if key is not None:
                    yield key, members, problem
                key, members, problem = name, {}, {}
            if ext in members:
                problem = problem or {READER_REASON: "duplicate_member", READER_DETAIL: f"{path}: {info.name} "
                                      "appears twice in one sample"}
            elif info.size > MAX_FILE_BYTES:
                problem = problem or {READER_REASON: "file_too_large", READER_DETAIL: f"{path}: {info.name} is "
                                      f"{info.size} bytes, over the limit of {MAX_FILE_BYTES}"}
            else:
                members[ext] = tar.extractfile(info).read()
    except Exception as e:  # noqa: BLE001 - tarfile.ReadError ("unexpected end of data"), OSError, ...
        raise _Damaged(f"reading failed at byte {tar.offset} ({type(e).__name__}: {e})", key) from None
    if not _end_is_clean(f, tar.offset):
        raise _Damaged(f"the archive does not end with end-of-archive blocks after byte {tar.offset}", key)
    if key is not None:
        yield key, members, problem


def read_webdataset_shard(path: str, fs: pafs.FileSystem) -> Iterator[pa.Table]:
    """Yield raw-row tables (RAW_SCHEMA) for every sample of the tar at `path`, plus one entry for a damaged tail
    (see the module docstring)."""
    try:
        f = fs.open_input_file(path)
        tar = tarfile.open(fileobj=f, mode="r:")
    except Exception as e:  # noqa: BLE001 - tarfile.ReadError, OSError, ...
        yield shard_entry(path, UNREADABLE_SHARD, f"does not open as a tar ({type(e).__name__}: {e}); rewrite the "
                                                  "shard or remove it")
        return
    with f, tar:
        rows, samples = [], _samples(tar, f, path)
        while True:
            try:
                key, members, problem = next(samples)
            except StopIteration:
                break
            except _Damaged as e:
                held = (f"; sample {utf8_text(e.key)[0]!r}, being read there, may lack members and is not kept"
                        if e.key is not None else "")
                rows.append(entry_row(path, DAMAGED_SHARD, f"{e.detail}: the file is truncated or corrupt from there "
                                      f"on{held}. Rewrite the shard; the samples before that point were read"))
                break
            row = webdataset_row(key, path, members)
            row.update(problem)  # a member-level problem comes first
            rows.append(row)
            if len(rows) >= SAMPLES_PER_TABLE:
                yield raw_table(rows)
                rows = []
        if rows:
            yield raw_table(rows)
