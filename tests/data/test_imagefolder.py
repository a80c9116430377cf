"""The image-folder reader (`maple.data.imagefolder`), without Ray: a captions file (CSV, TSV, JSON Lines) becomes one
row per image with all its captions, every line that cannot be used comes out once with its reason, and after the
image step (`read_image_files`) and validation, rows in = rows kept + rows quarantined."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from PIL import Image

from maple.data.coco import COCO_ITEMS_SCHEMA, read_image_files
from maple.data.config import DataConfig
from maple.data.imagefolder import find_captions_file, imagefolder_rows
from maple.data.raw import UNREADABLE_SHARD
from maple.data.validate import READER_REASON, validate_pairs


def _png(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _reasons(rows: list[dict]) -> list[str | None]:
    return [r[READER_REASON] for r in rows]


def _validated(rows: list[dict], root: Path) -> tuple[dict, dict]:
    """The rows through the image step and validation, as `maple.stages.read` runs them (without Ray)."""
    items = pa.Table.from_pylist(rows, schema=COCO_ITEMS_SCHEMA)
    raw = read_image_files(items, pafs.LocalFileSystem(), str(root))
    return validate_pairs(raw.to_pydict(), DataConfig(), "test")


def test_csv_lines_naming_one_image_make_one_pair_with_its_captions_in_file_order(tmp_path):
    path = _write(tmp_path / "metadata.csv", "file_name,caption,licence\n"
                                             "a/1.png,a red square,cc-by\n"
                                             "b/2.png,a blue circle,cc-by\n"
                                             "a/1.png,a square in red,cc0\n")
    rows = imagefolder_rows(path)
    assert [(r["id"], r["file_name"], r["captions"]) for r in rows] == [
        ("a/1.png", "a/1.png", ["a red square", "a square in red"]), ("b/2.png", "b/2.png", ["a blue circle"])]
    assert _reasons(rows) == [None, None] and {r["source"] for r in rows} == {str(path)}


def test_jsonl_takes_a_list_of_captions_an_id_column_and_other_column_names(tmp_path):
    path = _write(tmp_path / "captions.jsonl",
                  json.dumps({"id": 7, "image": "x.png", "text": "one"}) + "\n\n" +
                  json.dumps({"id": "eight", "path": "y.png", "captions": ["two", "three"]}) + "\n")
    rows = imagefolder_rows(path)
    assert [(r["id"], r["file_name"], r["captions"]) for r in rows] == [("7", "x.png", ["one"]),
                                                                       ("eight", "y.png", ["two", "three"])]


def test_a_tsv_and_a_spreadsheet_byte_order_mark_are_read(tmp_path):
    path = _write(tmp_path / "captions.tsv", b"\xef\xbb\xbffile_name\tcaption\nx.png\ta caption, with a comma\n")
    assert [(r["file_name"], r["captions"]) for r in imagefolder_rows(path)] == [("x.png", ["a caption, with a comma"])]


def test_every_bad_line_comes_out_once_with_its_reason_and_the_good_lines_are_kept(tmp_path):
    lines = [
        "file_name,caption,id",
        "good.png,a red square,",                 # kept
        "good.png,another caption,",              # joins the row above
        "two.png,a field,too,many",               # malformed_line (field count)
        ",no file,",                              # missing_field:file_name
        "/etc/passwd,absolute,",                  # bad_file_name
        "c#1.png,a hash,",                        # bad_id (the default id is the file name)
        "good.png,an other id,other",             # conflicting_id
        "three.png,a caption,good.png",           # duplicate_id: the id of another file
        'four.png,"a quote"then text,',           # malformed_line (quoting)
    ]
    rows = imagefolder_rows(_write(tmp_path / "metadata.csv", "\n".join(lines) + "\n"))
    assert _reasons(rows) == [None, "malformed_line", "missing_field:file_name", "bad_file_name", "bad_id",
                              "conflicting_id", "duplicate_id", "malformed_line"]
    assert rows[0]["captions"] == ["a red square", "another caption"]
    assert all(r["_quarantine_detail"].startswith(str(tmp_path / "metadata.csv")) for r in rows[1:])
    assert "line 4" in rows[1]["_quarantine_detail"] and "line 10" in rows[-1]["_quarantine_detail"]


def test_an_unterminated_quote_is_one_bad_row_not_a_caption_that_swallows_the_rest(tmp_path):
    rows = imagefolder_rows(_write(tmp_path / "m.csv", 'file_name,caption\na.png,ok\nb.png,"never closed\nc.png,x\n'))
    assert _reasons(rows) == [None, "malformed_line"]
    assert "lines to 4" in rows[1]["_quarantine_detail"]


def test_bad_json_lines_and_wrong_types_are_marked(tmp_path):
    lines = ['{"file_name": "a.png", "caption": "fine"}', "{not json", "[1, 2]",
             '{"file_name": "b.png", "caption": 3}', '{"file_name": "c.png", "id": true, "caption": "x"}',
             '{"file_name": "d.png", "caption": "\\ud800"}']
    rows = imagefolder_rows(_write(tmp_path / "m.jsonl", "\n".join(lines)))
    assert _reasons(rows) == [None, "malformed_line", "malformed_line", "wrong_type:captions", "wrong_type:id",
                              "invalid_utf8:captions"]


def test_bytes_that_are_not_utf8_mark_their_line_only(tmp_path):
    rows = imagefolder_rows(_write(tmp_path / "m.csv", b"file_name,caption\na.png,fine\nb.png,caf\xe9\n"))
    assert _reasons(rows) == [None, "invalid_utf8:captions"]
    assert rows[1]["captions"] == ["caf\ufffd"]  # storable, and the detail says to re-encode the file


@pytest.mark.parametrize("text", ["", "name,text\na.png,x\n", "file_name,label\na.png,x\n"])
def test_a_file_without_a_header_naming_image_and_caption_is_one_unreadable_entry(tmp_path, text):
    rows = imagefolder_rows(_write(tmp_path / "m.csv", text))
    assert _reasons(rows) == [UNREADABLE_SHARD] and rows[0]["id"] is None
    assert "file_name" in rows[0]["_quarantine_detail"]


def test_another_suffix_is_one_unreadable_entry(tmp_path):
    assert _reasons(imagefolder_rows(_write(tmp_path / "m.txt", "file_name,caption\n"))) == [UNREADABLE_SHARD]


def test_rows_in_equal_rows_kept_plus_quarantined_after_the_image_step(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png", (0, 0, 200))
    _write(tmp_path / "img" / "broken.png", b"\x89PNG\r\n\x1a\n not an image")
    _png(tmp_path / "outside.png")
    path = _write(tmp_path / "img" / "metadata.csv", "file_name,caption\n"
                                                     "a.png,a red square\nb.png,a blue square\nb.png,\n"
                                                     "missing.png,gone\nbroken.png,broken\n../outside.png,escape\n"
                                                     "blank.png,   \nextra,field,here\n")
    rows = imagefolder_rows(path)
    good, bad = _validated(rows, tmp_path / "img")
    lines = 8  # the data lines; b.png's two lines are one pair
    assert len(good["id"]) + len(bad["id"]) == len(rows) == lines - 1
    assert good["id"] == ["a.png", "b.png"] and good["captions"] == [["a red square"], ["a blue square"]]
    assert dict(zip(bad["id"], bad["reason"])) == {"missing.png": "missing_file", "broken.png": "corrupt",
                                                   "../outside.png": "bad_file_name", "blank.png": "missing_file",
                                                   None: "malformed_line"}


def test_the_captions_file_is_found_in_the_folder_or_named_directly(tmp_path):
    path = _write(tmp_path / "photos" / "metadata.jsonl", "")
    assert find_captions_file(tmp_path / "photos") == path
    assert find_captions_file(path) == path
    _write(tmp_path / "photos" / "metadata.csv", "")
    with pytest.raises(FileNotFoundError, match="metadata.jsonl, metadata.csv"):
        find_captions_file(tmp_path / "photos")
    with pytest.raises(FileNotFoundError, match="holds none of"):
        find_captions_file(tmp_path)
