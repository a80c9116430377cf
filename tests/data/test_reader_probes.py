"""The bad inputs of docs/security.md, tried on the readers of one file and validation (no Ray; the Ray stages run
these same functions per file): each must come out as the reason the table states, with every row accounted for.
The table in docs/security.md is this test's output (`MAPLE_WRITE_DOCS=1` rewrites it)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from maple.data.coco import COCO_ITEMS_SCHEMA, coco_rows, read_image_files
from maple.data.config import DataConfig
from maple.data.parquet_pairs import read_parquet_shard
from maple.data.validate import validate_pairs
from maple.data.webdataset import read_webdataset_shard
from tests.fixtures.doc_tables import check_section, markdown_table

LOCAL = pafs.LocalFileSystem()


def png(size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def eps() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="EPS")
    return buf.getvalue()


def bomb_header() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()[:300]  # the header says 400 M pixels; the data is cut off


# --- shards of GOOD good rows plus the bad input ------------------------------------------------------------------

GOOD = 2
ROWS = {"id": ["r0", "r1", "r2"], "captions": [["a red square"]] * 3}


def parquet(columns: dict, **write):
    """A probe: a Parquet shard of `columns`; `write` goes to pq.write_table."""
    def run(tmp: Path):
        pq.write_table(pa.table(columns), tmp / "s.parquet", **write)
        return list(read_parquet_shard(str(tmp / "s.parquet"), LOCAL)), len(next(iter(columns.values())))
    return run


def damaged_parquet(damage: Callable[[bytes], bytes], **write):
    def run(tmp: Path):
        pq.write_table(pa.table({**ROWS, "image": [png()] * 3}), tmp / "s.parquet", **write)
        (tmp / "s.parquet").write_bytes(damage((tmp / "s.parquet").read_bytes()))
        return list(read_parquet_shard(str(tmp / "s.parquet"), LOCAL)), 3
    return run


def flip_in_a_page(data: bytes) -> bytes:
    out = bytearray(data)
    out[out.find(b"a red square") + 2] ^= 0x20
    return bytes(out)


def with_image(image: bytes):
    return parquet({**ROWS, "image": [png(), png(), image]})


def webdataset(extra: list[tuple[str, bytes]], cut: int | None = None):
    """A probe: a tar of GOOD good samples and then `extra` members, cut to `cut` bytes."""
    def run(tmp: Path):
        buf = io.BytesIO()
        members = [m for i in range(GOOD) for m in ((f"g{i}.png", png()), (f"g{i}.txt", b"a red square"))] + extra
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        (tmp / "s.tar").write_bytes(buf.getvalue()[:cut])
        return list(read_webdataset_shard(str(tmp / "s.tar"), LOCAL)), None
    return run


def coco(images: list[dict] = (), annotations: list[dict] = (), raw: bytes | None = None, link: str | None = None):
    """A probe: a captions JSON of GOOD good images plus `images` / `annotations` (or `raw` bytes); `link`: a file
    name in image_root made a symlink to a file outside it."""
    def run(tmp: Path):
        root = tmp / "images"
        root.mkdir()
        for i in range(GOOD):
            (root / f"g{i}.png").write_bytes(png())
        if link:
            (tmp / "secret.png").write_bytes(png())
            (root / link).symlink_to(tmp / "secret.png")
        data = {"images": [{"id": f"g{i}", "file_name": f"g{i}.png"} for i in range(GOOD)] + list(images),
                "annotations": [{"image_id": f"g{i}", "caption": "a red square"} for i in range(GOOD)]
                + list(annotations)}
        (tmp / "c.json").write_bytes(raw if raw is not None else json.dumps(data).encode())
        items = pa.Table.from_pylist(coco_rows(tmp / "c.json"), schema=COCO_ITEMS_SCHEMA)
        return [read_image_files(items, LOCAL, str(root))], None
    return run


def one_image(name: str, caption="x") -> dict:
    return {"images": [{"id": "b", "file_name": name}], "annotations": [{"image_id": "b", "caption": caption}]}


INVALID_UTF8 = pa.array([b"a red square", b"a red square", b"\xff\xfe bad"], pa.binary()).view(pa.string())
GOOD_TAR_BYTES = 4 * 1024  # GOOD samples of two one-block members

# (format, bad input, the reason it must be quarantined with, the probe)
PROBES = [
    ("Parquet", "a caption that is not valid UTF-8", "invalid_utf8:captions",
     parquet({"id": ROWS["id"], "image": [png()] * 3, "captions": INVALID_UTF8})),
    ("Parquet", "a file cut in half", "unreadable_shard", damaged_parquet(lambda d: d[: len(d) // 2])),
    ("Parquet", "not Parquet at all", "unreadable_shard", damaged_parquet(lambda d: b"garbage" * 20)),
    ("Parquet", "a shard without an image column", "missing_column:image", parquet(ROWS)),
    ("Parquet", "captions stored as numbers", "wrong_column_type:captions",
     parquet({"id": ["a", "b"], "image": [png(), png()], "captions": [1.0, 2.0]})),
    ("Parquet", "a flipped byte in a checksummed data page", "unreadable_row_group",
     damaged_parquet(flip_in_a_page, write_page_checksum=True, compression="none", row_group_size=1)),
    ("Parquet", "an image that is not an image", "corrupt", with_image(b"\x89PNG not really")),
    ("Parquet", "a decompression bomb (header of a 20000x20000 PNG)", "too_large", with_image(bomb_header())),
    ("Parquet", "an EPS image (PIL would run Ghostscript)", "corrupt", with_image(eps())),
    ("WebDataset", "a sample without its image", "missing_field:image", webdataset([("b.txt", b"a caption")])),
    ("WebDataset", "a .txt in Latin-1", "corrupt_text",
     webdataset([("b.png", png()), ("b.txt", "crème".encode("latin-1"))])),
    ("WebDataset", "a .json that does not parse", "corrupt_json", webdataset([("b.png", png()), ("b.json", b'{"c')])),
    ("WebDataset", "a .json caption that is a number", "wrong_type:captions",
     webdataset([("b.png", png()), ("b.json", b'{"caption": 7}')])),
    ("WebDataset", "a .json caption with a lone surrogate escape", "invalid_utf8:captions",
     webdataset([("b.png", png()), ("b.json", b'{"caption": "a \\ud800"}')])),
    ("WebDataset", "the same member twice in a sample", "duplicate_member",
     webdataset([("b.png", png()), ("b.txt", b"one"), ("b.txt", b"two")])),
    ("WebDataset", "a tar cut inside the third sample", "damaged_shard",
     webdataset([("b.png", png() * 4), ("b.txt", b"x")], cut=GOOD_TAR_BYTES + 512 + 100)),
    ("WebDataset", "an empty file", "unreadable_shard", webdataset([], cut=0)),
    ("COCO", "a caption that is a number", "wrong_type:captions", coco(**one_image("g0.png", caption=5))),
    ("COCO", "a file name with a NUL", "bad_file_name", coco(**one_image("g0.png\0.txt"))),
    ("COCO", "a file name that leads out of image_root (`../`)", "bad_file_name", coco(**one_image("../c.json"))),
    ("COCO", "an absolute file name", "bad_file_name", coco(**one_image("/etc/passwd"))),
    ("COCO", "a symlink in image_root that points outside it", "bad_file_name",
     coco(**one_image("link.png"), link="link.png")),
    ("COCO", "an image file that does not exist", "missing_file", coco(**one_image("gone.png"))),
    ("COCO", "an annotation that names no image", "malformed_annotation", coco(annotations=[{"caption": "orphan"}])),
    ("COCO", "a JSON cut short", "unreadable_shard", coco(raw=b'{"images": [{"id": 1, "file_')),
]
WHOLE_SHARD = {"unreadable_shard", "missing_column:image", "wrong_column_type:captions"}  # no good row left


def outcome(tables: list[pa.Table]) -> tuple[int, Counter]:
    kept, reasons = 0, Counter()
    for table in tables:
        good, bad = validate_pairs(table.to_pydict(), DataConfig(), "probe")
        kept += len(good["id"])
        reasons.update(bad["reason"])
        assert all(bad["source"]), "every quarantined row names its file"
    return kept, reasons


def test_every_bad_input_is_quarantined_with_its_reason_and_the_table_says_so(tmp_path):
    rows = []
    for k, (fmt, what, expected, probe) in enumerate(PROBES):
        folder = tmp_path / str(k)
        folder.mkdir()
        tables, written = probe(folder)
        kept, reasons = outcome(tables)
        assert expected in reasons, (what, reasons)
        assert kept == (0 if expected in WHOLE_SHARD else GOOD), (what, kept)
        if written is not None and expected != "unreadable_shard":
            assert kept + sum(reasons.values()) == written, what  # rows in = rows kept + rows quarantined
        shown = ", ".join(f"`{reason}` x{n}" if n > 1 else f"`{reason}`" for reason, n in sorted(reasons.items()))
        rows.append([fmt, what, str(kept), shown])
    check_section("docs/security.md", "reader probes", markdown_table(
        ["format", "bad input", "rows kept", "quarantined (reason)"], rows), "tests/data/test_reader_probes.py")
