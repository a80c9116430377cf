"""Readers on real files (Parquet, WebDataset tar, COCO JSON + folder, the synthetic world) through Ray Data, then
validation: good + quarantined rows add up to the input, each bad row with its reason.

Ray comes from the session fixture `ray_local` (tests/conftest.py)."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
from PIL import Image

from maple.data.config import DataConfig, WorldConfig
from maple.data.parquet_pairs import parquet_mapping, raw_from_parquet
from maple.data.quarantine import quarantine_counts, write_quarantine
from maple.data.schema import PAIRS_SCHEMA, QUARANTINE_SCHEMA
from maple.data.synth import synthesize
from maple.section import SetupError
from maple.stages.read import read_pairs, validated


def _image(size=(16, 16), mode="RGB", colour=(10, 20, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _run(ds_pair):
    good, bad = ds_pair
    return good.take_all(), bad.take_all()


def _by_id(rows):
    return {r["id"]: r for r in rows}


def test_parquet_shard_splits_into_good_and_quarantined_rows_with_nothing_lost(tmp_path, ray_local):
    rows = [  # ids as integers and a single `caption` column: both mapped to PAIRS_SCHEMA
        (1, _image(), "a red circle"),
        (2, b"\x89PNG not really", "corrupt"),
        (3, b"", "empty file"),
        (4, _image(size=(4, 4)), "too small"),
        (5, _image(size=(400, 8)), "extreme aspect ratio"),
        (6, _image(), "   "),
        (7, _image(), "x" * 3000),
        (8, _image(mode="P", colour=2), "a palette image"),
    ]
    shard = tmp_path / "pairs" / "part-0.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"id": [r[0] for r in rows], "image": [r[1] for r in rows],
                             "caption": [r[2] for r in rows]}), shard)
    cfg = DataConfig(format="parquet", path=str(tmp_path / "pairs"))
    good, bad = _run(validated(read_pairs(cfg), cfg, "pairs", materialize=True))

    assert len(good) + len(bad) == len(rows)
    assert sorted(r["id"] for r in good) == ["1", "8"]
    assert {r["id"]: r["reason"] for r in bad} == {"2": "corrupt", "3": "empty", "4": "too_small",
                                                  "5": "extreme_aspect_ratio", "6": "empty_caption",
                                                  "7": "caption_too_long"}
    kept = _by_id(good)
    assert kept["1"]["captions"] == ["a red circle"] and kept["1"]["source"] == str(shard)
    assert kept["8"]["image_format"] == "png" and Image.open(io.BytesIO(kept["8"]["image"])).mode == "RGB"
    pa.Table.from_pylist(good, schema=PAIRS_SCHEMA)
    pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA)
    assert all(r["stage"] == "pairs" for r in bad)


def test_parquet_shard_without_an_image_column_quarantines_its_rows_naming_file_and_column(tmp_path, ray_local):
    good_shard, shard = tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"
    pq.write_table(pa.table({"id": ["g"], "image": [_image()], "captions": [["a caption"]]}), good_shard)
    pq.write_table(pa.table({"id": ["a", "b"], "captions": [["a caption"], ["another"]]}), shard)
    cfg = DataConfig(format="parquet", path=str(tmp_path))
    good, bad = _run(validated(read_pairs(cfg), cfg, "pairs", materialize=True))
    assert [r["id"] for r in good] == ["g"]  # the other shard is read
    assert {r["id"]: r["reason"] for r in bad} == {"a": "missing_column:image", "b": "missing_column:image"}
    assert all(r["source"] == str(shard) and f"{shard} row" in json.loads(r["row"])["detail"] for r in bad)


def test_parquet_column_of_the_wrong_type_quarantines_the_rows_naming_file_and_column(tmp_path, ray_local):
    shard = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"id": ["a"], "image": [b"x"], "captions": [3]}), shard)
    cfg = DataConfig(format="parquet", path=str(shard))
    good, bad = _run(validated(read_pairs(cfg), cfg, "pairs", materialize=True))
    assert good == [] and [r["reason"] for r in bad] == ["wrong_column_type:captions"]
    assert "column 'captions'" in json.loads(bad[0]["row"])["detail"]


def test_hugging_face_style_columns_map_to_raw_rows():
    """Integer ids, `text` captions and `image` as struct<bytes, path> (the `datasets` Image feature)."""
    table = pa.table({"image_id": pa.array([1, 2], pa.int64()),
                      "image": pa.array([{"bytes": b"png bytes", "path": "a.png"}, {"bytes": None, "path": "b.png"}]),
                      "text": pa.array(["a caption", None], pa.large_string())})
    mapping = parquet_mapping(table.schema, "part-0.parquet")
    assert raw_from_parquet(table, mapping, "/data/part-0.parquet").to_pylist() == [
        {"id": "1", "image": b"png bytes", "captions": ["a caption"], "source": "/data/part-0.parquet",
         "annotation": None, "_quarantine_reason": None, "_quarantine_detail": None},
        {"id": "2", "image": None, "captions": None, "source": "/data/part-0.parquet",
         "annotation": None, "_quarantine_reason": None, "_quarantine_detail": None},
    ]


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shard_reads_txt_and_json_captions_keyed_by_sample(tmp_path, ray_local):
    shard = tmp_path / "shard-000.tar"
    _write_tar(shard, [
        ("s0.jpg", _image(fmt="JPEG")), ("s0.txt", b"first caption\n\nsecond caption\n"),
        ("s1.png", _image()), ("s1.json", json.dumps({"captions": ["one", "two"]}).encode()),
        ("s2.png", _image(mode="RGBA", colour=(1, 2, 3, 0))), ("s2.json", b'{"caption": "from json"}'),
        ("s2.txt", b"from txt"),
        ("s3.jpg", b"not a jpeg"), ("s3.txt", b"a caption"),
        ("s4.png", _image()),
        ("s5.png", _image()), ("s5.json", b"{broken"),
        ("s6.txt", b"a caption without an image"),
    ])
    cfg = DataConfig(format="webdataset", path=str(tmp_path))
    good, bad = _run(validated(read_pairs(cfg), cfg, "pairs"))

    assert len(good) + len(bad) == 7
    kept = _by_id(good)
    assert kept["s0"]["captions"] == ["first caption", "second caption"] and kept["s0"]["image_format"] == "jpeg"
    assert kept["s1"]["captions"] == ["one", "two"]
    assert kept["s2"]["captions"] == ["from txt", "from json"] and kept["s2"]["image_format"] == "png"
    assert {r["source"] for r in good} == {str(shard)}
    assert {r["id"]: r["reason"] for r in bad} == {"s3": "corrupt", "s4": "missing_field:captions",
                                                  "s5": "corrupt_json", "s6": "missing_field:image"}


def test_coco_json_groups_captions_per_image_and_quarantines_missing_files(tmp_path, ray_local):
    images = tmp_path / "images"
    images.mkdir()
    (images / "1.jpg").write_bytes(_image(fmt="JPEG"))
    (images / "2.png").write_bytes(_image(mode="L", colour=100))
    (images / "4.png").write_bytes(_image())
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.png"},
                   {"id": 3, "file_name": "3.jpg"}, {"id": 4, "file_name": "4.png"},
                   {"id": 5, "file_name": "../outside.png"}],
        "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "grey"},
                        {"image_id": 1, "caption": "a brown dog"}, {"image_id": 3, "caption": "gone"},
                        {"image_id": 9, "caption": "an orphan caption"}, {"image_id": 5, "caption": "escape"}],
    }
    captions_json = tmp_path / "captions.json"
    captions_json.write_text(json.dumps(coco))
    cfg = DataConfig(format="coco", path=str(captions_json), image_root=str(images))
    good, bad = _run(validated(read_pairs(cfg), cfg, "pairs"))

    assert len(good) + len(bad) == 6  # 5 images + 1 annotation naming no image
    kept = _by_id(good)
    assert sorted(kept) == ["1", "2"]
    assert kept["1"]["captions"] == ["a dog", "a brown dog"] and kept["1"]["source"] == str(captions_json)
    assert kept["2"]["image_format"] == "png"
    assert {r["id"]: r["reason"] for r in bad} == {"3": "missing_file", "4": "empty_caption",
                                                  "5": "bad_file_name", "9": "unknown_image_id"}
    assert json.loads(_by_id(bad)["9"]["row"])["captions"] == ["an orphan caption"]


def test_synthetic_world_train_split_reads_as_all_good_pairs(tmp_path, ray_local):
    world = WorldConfig(n_train=12, n_val=2, n_test=2, n_compositional=2, shard_size=5)
    synthesize(world, tmp_path)
    cfg = DataConfig(format="synthetic", path=str(tmp_path))
    good, bad = _run(validated(read_pairs(cfg), cfg, "pairs", materialize=True))
    assert bad == [] and len(good) == 12
    original = pq.read_table(tmp_path / "train").to_pylist()
    assert {r["id"]: r["image"] for r in good} == {r["id"]: r["image"] for r in original}  # bytes untouched
    assert all(r["annotation"] and r["source"] == "synthetic:train" for r in good)


def test_write_quarantine_streams_a_dataset_to_one_shard_file(tmp_path, ray_local):
    rows = [{"id": f"r{i}", "source": "s", "stage": "pairs", "reason": reason, "row": "{}"}
            for i, reason in enumerate(["corrupt", "corrupt", "missing_file"])]
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA))
    path = write_quarantine(ds, tmp_path, "shard-000")
    assert pq.read_table(path).schema.equals(QUARANTINE_SCHEMA)
    assert quarantine_counts(tmp_path) == {"corrupt": 2, "missing_file": 1}


def test_a_coco_image_folder_without_images_fails_in_one_sentence_before_any_read(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "README.txt").write_text("the images are elsewhere")
    captions_json = tmp_path / "captions.json"
    captions_json.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}],
                                         "annotations": [{"image_id": 1, "caption": "a dog"}]}))
    cfg = DataConfig(format="coco", path=str(captions_json), image_root=str(images))
    with pytest.raises(SetupError, match=rf"^data.image_root={images} holds no images: none of the first 1 files the "
                                         r"captions JSON names \(e.g. '1.jpg'\) is there; set data.image_root to the "
                                         r"folder its file_name entries are relative to$"):
        read_pairs(cfg)  # raised on the driver: no Ray Dataset is made (this test has no Ray fixture)
