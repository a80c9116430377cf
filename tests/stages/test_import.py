"""`maple data import`'s stage (`maple.stages.read.import_pairs`) on the session's local Ray: an image folder becomes
train/val/test Parquet splits by id plus a quarantine with every row not kept; a named split replaces only itself;
a captions file that cannot work stops before any work, in one sentence."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from maple.data.config import DataConfig
from maple.data.splits import split_of
from maple.section import SetupError
from maple.stages.read import import_pairs, read_imagefolder_pairs


def _folder(root, names: list[str], lines: list[str]):
    for k, name in enumerate(names):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (10 * k, 0, 0)).save(buf, format="PNG")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(buf.getvalue())
    (root / "metadata.csv").write_text("\n".join(["file_name,caption", *lines]) + "\n")
    return root


def test_an_image_folder_becomes_splits_by_id_and_a_quarantine(tmp_path, ray_local):
    names = [f"img/{k:02d}.png" for k in range(24)]
    photos = _folder(tmp_path / "photos", names, [f"{n},picture {n}" for n in names] +
                     ["img/missing.png,gone", "img/00.png,a second caption", "too,many,fields"])
    cfg = DataConfig(format="imagefolder", path=str(photos), val_fraction=0.25, test_fraction=0.25, shard_rows=5)
    summary = import_pairs(cfg, tmp_path / "world")

    for split in ("train", "val", "test"):
        ids = pq.read_table(tmp_path / "world" / split)["id"].to_pylist()
        assert sorted(ids) == [n for n in names if split_of(n, 0.25, 0.25) == split]
        assert summary["splits"][split] == len(ids)
    assert summary["reasons"] == {"missing_file": 1, "malformed_line": 1}
    quarantine = pq.read_table(tmp_path / "world" / "quarantine" / "import.parquet").to_pylist()
    assert sorted((q["id"], q["reason"], q["stage"]) for q in quarantine if q["id"]) == [
        ("img/missing.png", "missing_file", "import:imagefolder")]
    captions = {r["id"]: r["captions"] for split in ("train", "val", "test")
                for r in pq.read_table(tmp_path / "world" / split).to_pylist()}
    assert captions["img/00.png"] == ["picture img/00.png", "a second caption"]


def test_a_named_split_takes_every_pair_and_replaces_only_itself(tmp_path, ray_local):
    main = _folder(tmp_path / "main", ["a.png", "b.png"], ["a.png,one", "b.png,two"])
    held = _folder(tmp_path / "held", ["h.png"], ["h.png,held out"])
    world = tmp_path / "world"
    import_pairs(DataConfig(format="imagefolder", path=str(main), split="train"), world)
    summary = import_pairs(DataConfig(format="imagefolder", path=str(held), split="test"), world)
    assert summary["splits"] == {"test": 1}
    assert pq.read_table(world / "train")["id"].to_pylist() == ["a.png", "b.png"]
    assert pq.read_table(world / "test")["id"].to_pylist() == ["h.png"]
    assert not (world / "val").exists()


def test_an_id_in_two_parquet_shards_is_kept_once_and_quarantined_once(tmp_path, ray_local):
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 90, 0)).save(png, format="PNG")
    shards = tmp_path / "shards"
    shards.mkdir()
    for k, ids in enumerate((["x", "y"], ["x", "z"])):
        pq.write_table(pa.table({"id": ids, "image": [png.getvalue()] * 2, "caption": ["a green square"] * 2}),
                       shards / f"part-{k}.parquet")
    summary = import_pairs(DataConfig(format="parquet", path=str(shards), split="train"), tmp_path / "world")
    assert sorted(pq.read_table(tmp_path / "world" / "train")["id"].to_pylist()) == ["x", "y", "z"]
    assert summary["reasons"] == {"duplicate_id": 1}


@pytest.mark.parametrize("text, says", [("name,text\na.png,x\n", "file name column"),
                                        ("file_name,caption\nnot-there.png,x\n", "data.image_root")])
def test_a_captions_file_that_cannot_work_stops_before_any_work(tmp_path, text, says):
    (tmp_path / "metadata.csv").write_text(text)
    with pytest.raises(SetupError, match=says):
        read_imagefolder_pairs(str(tmp_path), None)  # raised on the driver: no Ray Dataset is made
