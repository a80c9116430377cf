"""validate_pairs: every row comes out once, good rows conform to PAIRS_SCHEMA, bad rows carry their reason."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from maple.data.config import DataConfig
from maple.data.images import decode_image
from maple.data.quarantine import quarantine_counts, quarantine_path, write_quarantine
from maple.data.schema import PAIRS_SCHEMA, QUARANTINE_SCHEMA
from maple.data.validate import validate_pairs

CFG = DataConfig(min_image_side=8, max_aspect_ratio=5.0, max_caption_chars=50)


def _png(size=(16, 16), mode="RGB", colour=(10, 20, 30), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG", **save)
    return buf.getvalue()


def _batch(rows: list[dict]) -> dict[str, list]:
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}


def _row(i, image=None, captions=("a red circle",), **extra) -> dict:
    return {"id": f"r{i}", "image": _png() if image is None else image, "captions": list(captions),
            "source": "shard-0", "annotation": None, **extra}


def _reasons(rows: list[dict], cfg: DataConfig = CFG) -> list[str]:
    good, bad = validate_pairs(_batch(rows), cfg, "test")
    assert len(good["id"]) + len(bad["id"]) == len(rows)
    return bad["reason"]


def _reasons_of(batch: dict) -> list[str]:
    good, bad = validate_pairs(batch, CFG, "test")
    assert len(good["id"]) + len(bad["id"]) == len(batch["id"])
    return bad["reason"]


def _object_array(values: list) -> np.ndarray:
    """What Ray's "numpy" batch format hands over: object arrays, nested lists as arrays."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = np.array(v, dtype=object) if isinstance(v, list) else v
    return out


def test_good_rows_conform_to_pairs_schema_and_keep_rgb_png_bytes():
    data = _png()
    good, bad = validate_pairs(_batch([_row(0, image=data), _row(1)]), CFG, "test")
    table = pa.Table.from_pydict(good, schema=PAIRS_SCHEMA)
    assert table.num_rows == 2 and bad["id"] == []
    assert table["image"][0].as_py() == data and table["image_format"][0].as_py() == "png"
    assert table.column_names == PAIRS_SCHEMA.names


def test_rgb_jpeg_keeps_its_bytes_and_format():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format="JPEG")
    good, _ = validate_pairs(_batch([_row(0, image=buf.getvalue())]), CFG, "test")
    assert good["image"] == [buf.getvalue()] and good["image_format"] == ["jpeg"]


@pytest.mark.parametrize("mode,colour", [("P", 3), ("RGBA", (10, 20, 30, 255)), ("L", 90), ("LA", (90, 255)),
                                         ("I;16", 0x4000)])
def test_non_rgb_images_are_kept_and_re_encoded_as_rgb_png(mode, colour):
    good, bad = validate_pairs(_batch([_row(0, image=_png(mode=mode, colour=colour))]), CFG, "test")
    assert bad["id"] == [] and good["image_format"] == ["png"]
    stored = Image.open(io.BytesIO(good["image"][0]))
    assert stored.format == "PNG" and stored.mode == "RGB"


def test_cmyk_image_is_kept_as_rgb_png():
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG")
    good, _ = validate_pairs(_batch([_row(0, image=buf.getvalue())]), CFG, "test")
    assert good["image_format"] == ["png"]
    r, g, b = decode_image(good["image"][0]).getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_each_kind_of_bad_row_is_quarantined_with_its_reason():
    rows = [
        _row(0),
        _row(1, image=b"\x00garbage\xff" * 10),
        _row(2, image=b""),
        _row(3, image=_png(size=(4, 4))),
        _row(4, image=_png(size=(60, 10))),
        _row(5, captions=["   ", ""]),
        _row(6, captions=["x" * 51]),
        _row(7, _quarantine_reason="missing_file"),
        {**_row(8), "id": None},
        {**_row(9), "captions": 17},
        {**_row(10), "image": "a path, not bytes"},
        _row(11),
    ]
    assert _reasons(rows) == ["corrupt", "empty", "too_small", "extreme_aspect_ratio", "empty_caption",
                              "caption_too_long", "missing_file", "missing_field:id", "wrong_type:captions",
                              "wrong_type:image"]


def test_quarantine_rows_conform_to_quarantine_schema_and_keep_the_row_without_pixels():
    good, bad = validate_pairs(_batch([_row(0, image=b"junk", captions=["a caption"])]), CFG, "embed")
    table = pa.Table.from_pydict(bad, schema=QUARANTINE_SCHEMA)
    assert table.to_pylist()[0] | {"row": None} == {"id": "r0", "source": "shard-0", "stage": "embed",
                                                   "reason": "corrupt", "row": None}
    kept = json.loads(bad["row"][0])
    assert kept["captions"] == ["a caption"] and kept["image_bytes"] == 4 and "detail" in kept
    assert "image" not in kept


def test_a_missing_column_quarantines_every_row_naming_the_column():
    batch = _batch([_row(0), _row(1)])
    del batch["captions"]
    assert _reasons_of(batch) == ["missing_field:captions", "missing_field:captions"]


def test_duplicate_id_keeps_the_first_good_occurrence():
    rows = [_row(0, image=b"bad"), _row(0), _row(0), _row(1)]
    good, bad = validate_pairs(_batch(rows), CFG, "test")
    assert good["id"] == ["r0", "r1"] and bad["reason"] == ["corrupt", "duplicate_id"]


def test_blank_captions_beside_real_ones_are_dropped_and_captions_stripped():
    good, _ = validate_pairs(_batch([_row(0, captions=["  a red circle ", " ", "a circle"])]), CFG, "test")
    assert good["captions"] == [["a red circle", "a circle"]]


def test_integer_ids_and_a_single_caption_string_are_accepted():
    batch = _batch([_row(0)])
    batch["id"], batch["captions"] = [7], ["one caption"]
    good, _ = validate_pairs(batch, CFG, "test")
    assert good["id"] == ["7"] and good["captions"] == [["one caption"]]


def test_numpy_batches_validate_like_lists():
    rows = [_row(0), _row(1, image=b""), _row(2, captions=[])]
    batch = {k: _object_array(v) for k, v in _batch(rows).items()}
    good, bad = validate_pairs(batch, CFG, "test")
    assert good["id"] == ["r0"] and bad["reason"] == ["empty", "empty_caption"]
    pa.Table.from_pydict(good, schema=PAIRS_SCHEMA)


def test_image_limits_come_from_the_config():
    rows = [_row(0, image=_png(size=(40, 40)))]
    assert _reasons(rows, DataConfig(max_image_pixels=1000)) == ["too_large"]
    assert _reasons(rows, DataConfig(min_image_side=41)) == ["too_small"]


def test_write_quarantine_then_counts_by_reason(tmp_path):
    _, bad = validate_pairs(_batch([_row(0, image=b""), _row(1, image=b""), _row(2, captions=[])]), CFG, "t")
    path = write_quarantine(bad, tmp_path, "part-00000")
    write_quarantine([], tmp_path, "part-00001.parquet")  # a clean shard still records that it was checked
    assert path == quarantine_path(tmp_path, "part-00000") == tmp_path / "quarantine" / "part-00000.parquet"
    assert (tmp_path / "quarantine" / "part-00001.parquet").exists()
    assert quarantine_counts(tmp_path) == {"empty": 2, "empty_caption": 1}
    write_quarantine(bad, tmp_path, "part-00000")  # a re-run replaces the shard's file, it does not append
    assert quarantine_counts(tmp_path) == {"empty": 2, "empty_caption": 1}
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_quarantine_counts_of_a_stage_without_quarantine_is_empty(tmp_path):
    assert quarantine_counts(tmp_path) == {}
