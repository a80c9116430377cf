"""Readers: image-text pairs from Parquet, WebDataset tar shards, a COCO-style captions JSON, a folder of images with
a captions file (CSV / TSV / JSON Lines, Hugging Face's `imagefolder` layout) or the synthetic world, streamed into Ray
Datasets of raw rows, then split into good and quarantined rows by `validated`.

Every reader returns the same raw columns (`maple.data.raw.RAW_SCHEMA`): `id`, `image` (encoded bytes), `captions`,
`source`, `annotation`, and `_quarantine_reason` / `_quarantine_detail`, set where the reader already knows a row is
unusable (a COCO or image-folder image file that does not exist, a WebDataset JSON that does not parse, a Parquet
string that is not UTF-8, a captions-file line that does not parse) or for the part of a file it could not read at
all (one entry naming the file). Rows in = rows kept + rows quarantined, whatever the input; no bad shard stops the
read of the others.

Each shard is read by one function of one file (`maple.data.parquet_pairs`, `maple.data.webdataset`), mapped here
over the list of shards: one read task per file, so a shard's problems stay that shard's, and neither the blocks nor
the rows depend on the cluster's CPU count (Ray's own `read_webdataset` builds blocks through pandas, whose NaN for a
missing member depended on how many samples shared a block). Nothing is decoded on the driver; image bytes are read
by the read tasks (Parquet, WebDataset) or by a map stage (COCO, image folder), never collected.

Usage:
    raw = read_pairs(cfg.data)
    good, quarantine = validated(raw, cfg.data, stage="pairs")
    import_pairs(cfg.data, out)  # maple data import: the good pairs as train/val/test Parquet splits + quarantine
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data

from maple.data.coco import COCO_ITEMS_SCHEMA, check_image_root, coco_rows, read_image_files
from maple.data.config import DataConfig
from maple.data.imagefolder import find_captions_file, imagefolder_rows
from maple.data.parquet_pairs import read_parquet_shard
from maple.data.raw import RAW_SCHEMA, UNREADABLE_SHARD
from maple.data.schema import PAIRS_SCHEMA, QUARANTINE_SCHEMA
from maple.data.splits import SPLITS, SplitWriter, split_of
from maple.data.validate import READER_DETAIL, READER_REASON, validate_pairs
from maple.data.webdataset import read_webdataset_shard
from maple.section import SetupError

__all__ = ["RAW_SCHEMA", "import_pairs", "read_coco_pairs", "read_imagefolder_pairs", "read_pairs",
           "read_parquet_pairs", "read_webdataset_pairs", "validated"]


# --- files --------------------------------------------------------------------------------------------------------


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _list_files(path: str | None, ext: str, what: str) -> tuple[pafs.FileSystem, list[str]]:
    """A file, a folder (searched recursively) or a local glob -> the sorted `*.<ext>` files it names."""
    if not path:
        raise ValueError(f"data.path is not set: name the {what} (a .{ext} file, a folder of them or a glob)")
    fs, base = _filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem) and glob.has_magic(base):
        files = sorted(p for p in glob.glob(base, recursive=True) if p.endswith(f".{ext}") and os.path.isfile(p))
    else:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            files = [base]
        elif info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            files = sorted(i.path for i in infos if i.is_file and i.path.endswith(f".{ext}")
                           and not i.base_name.startswith((".", "_")))
        else:
            raise FileNotFoundError(f"data.path={path!r} does not exist")
    if not files:
        raise FileNotFoundError(f"data.path={path!r} holds no .{ext} files ({what})")
    return fs, files


def _read_each(batch: pa.Table, read_shard: Callable[..., Iterator[pa.Table]], fs: pafs.FileSystem,
               **kwargs) -> Iterator[pa.Table]:
    for path in batch["path"].to_pylist():
        yield from read_shard(path, fs, **kwargs)


def _read_shards(files: list[str], fs: pafs.FileSystem, read_shard: Callable[..., Iterator[pa.Table]],
                 **kwargs) -> ray.data.Dataset:
    """One read task per file: `read_shard(path, fs, **kwargs)` yields its raw-row tables, streamed as blocks."""
    paths = ray.data.from_arrow([pa.table({"path": [f]}) for f in files])  # one block, so one task, per file
    return paths.map_batches(_read_each, batch_format="pyarrow", batch_size=1,
                             fn_kwargs={"read_shard": read_shard, "fs": fs, **kwargs})


# --- the formats --------------------------------------------------------------------------------------------------


def read_parquet_pairs(path: str | list[str] | None, source_from_path: bool = False) -> ray.data.Dataset:
    """Parquet shards (a file, folder or glob, or a list of files) -> raw rows, each shard mapped by its own schema
    (`maple.data.parquet_pairs`). `source_from_path`: every row's source is its shard file, whatever a source column
    says (for stages whose output and resume go by input shard)."""
    if isinstance(path, list):
        fs, files = _filesystem(path[0])[0], [_filesystem(p)[1] for p in path]
    else:
        fs, files = _list_files(path, "parquet", "Parquet shards of image-text pairs")
    return _read_shards(files, fs, read_parquet_shard, source_from_path=source_from_path)


def read_webdataset_pairs(path: str | None) -> ray.data.Dataset:
    """WebDataset tar shards -> raw rows; id = the sample's key, source = the shard (`maple.data.webdataset`)."""
    fs, files = _list_files(path, "tar", "WebDataset tar shards")
    return _read_shards(files, fs, read_webdataset_shard)


def read_coco_pairs(captions_json: str | None, image_root: str | None) -> ray.data.Dataset:
    """A COCO-style captions JSON + its image folder -> raw rows (id = the image id, source = the JSON). The JSON is
    parsed on the driver (ids, file names and captions only, `maple.data.coco`); image bytes are read by a map
    stage. `image_root` defaults to the JSON's folder."""
    if not captions_json:
        raise ValueError("data.path is not set: name the COCO captions JSON")
    if not Path(captions_json).is_file():
        raise FileNotFoundError(f"data.path={captions_json!r}: COCO captions JSON not found")
    image_root = image_root or str(Path(captions_json).parent)
    fs, root = _filesystem(image_root)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"data.image_root={image_root!r} is not a folder")
    rows = coco_rows(captions_json)
    check_image_root(rows, fs, root)
    return _read_image_files(rows, fs, root)


def read_imagefolder_pairs(path: str | None, image_root: str | None) -> ray.data.Dataset:
    """A folder of images and its captions file (`data.path`: the .csv / .tsv / .jsonl, or the folder holding
    `metadata.jsonl` / `metadata.csv`) -> raw rows (id = the `id` column, else the file name; source = the captions
    file). The file is parsed on the driver (`maple.data.imagefolder`); image bytes are read by a map stage.
    `image_root` defaults to the captions file's folder."""
    if not path:
        raise ValueError("data.path is not set: name the captions file (.csv, .tsv or .jsonl) or the image folder "
                         "that holds metadata.csv / metadata.jsonl")
    captions = find_captions_file(path)
    image_root = image_root or str(captions.parent)
    fs, root = _filesystem(image_root)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"data.image_root={image_root!r} is not a folder")
    rows = imagefolder_rows(captions)
    unread = [r for r in rows if r[READER_REASON] == UNREADABLE_SHARD]
    if unread:  # the whole file: every row would be quarantined, so say what to fix now
        raise SetupError(f"data.path={path}: {unread[0][READER_DETAIL]}")
    if rows and all(r[READER_REASON] == "missing_field:file_name" for r in rows):
        raise SetupError(f"data.path={path}: no line names an image; its JSON lines need a file name key "
                         "(file_name, filename, image or path) relative to data.image_root")
    check_image_root(rows, fs, root)
    return _read_image_files(rows, fs, root)


def _read_image_files(rows: list[dict], fs: pafs.FileSystem, root: str) -> ray.data.Dataset:
    """Rows naming image files (COCO_ITEMS_SCHEMA) -> raw rows with the images read by a map stage."""
    items = pa.Table.from_pylist(rows, schema=COCO_ITEMS_SCHEMA)
    # Several input blocks so that the image reads spread over the cluster; small batches, since each becomes a
    # block of image bytes.
    ds = ray.data.from_arrow([items.slice(k, 1024) for k in range(0, max(items.num_rows, 1), 1024)])
    return ds.map_batches(read_image_files, batch_format="pyarrow", batch_size=256,
                          fn_kwargs={"fs": fs, "image_root": root})


# --- dispatch and validation ---------------------------------------------------------------------------------------


def synthetic_train_dir(path: str | None) -> str:
    """The world folder written by `maple.data.synth.synthesize` (or its train/ split itself) -> the train split."""
    if not path:
        raise ValueError("data.path is not set: name the synthetic world's folder (written by maple.data.synth)")
    train = Path(path) / "train"
    return str(train if train.is_dir() else path)


def read_pairs(cfg: DataConfig) -> ray.data.Dataset:
    """Raw rows (RAW_SCHEMA) from `cfg.format` at `cfg.path`; lazy, nothing is read until the Dataset runs."""
    if cfg.format == "parquet":
        return read_parquet_pairs(cfg.path)
    if cfg.format == "webdataset":
        return read_webdataset_pairs(cfg.path)
    if cfg.format == "coco":
        return read_coco_pairs(cfg.path, cfg.image_root)
    if cfg.format == "imagefolder":
        return read_imagefolder_pairs(cfg.path, cfg.image_root)
    if cfg.format == "synthetic":
        return read_parquet_pairs(synthetic_train_dir(cfg.path))
    raise ValueError(f"data.format={cfg.format!r} is not one of synthetic, parquet, webdataset, coco, imagefolder")


CHECKED_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in PAIRS_SCHEMA]
    + [pa.field("stage", pa.string()), pa.field(READER_REASON, pa.string()), pa.field("_quarantine_row", pa.string())]
)


def _check(table: pa.Table, cfg: DataConfig, stage: str) -> pa.Table:
    """validate_pairs over an Arrow batch -> one table, good rows first (reason null), then quarantined rows
    (image null, so a quarantined row costs no image bytes downstream)."""
    good, bad = validate_pairs(table.to_pydict(), cfg, stage)
    n_good, n_bad = len(good["id"]), len(bad["id"])
    cols = {name: good[name] + [None] * n_bad for name in PAIRS_SCHEMA.names}
    cols["id"] = good["id"] + bad["id"]
    cols["source"] = good["source"] + bad["source"]
    cols["stage"] = [stage] * (n_good + n_bad)
    cols[READER_REASON] = [None] * n_good + bad["reason"]
    cols["_quarantine_row"] = [None] * n_good + bad["row"]
    return pa.Table.from_pydict(cols, schema=CHECKED_SCHEMA)


def _good_part(table: pa.Table) -> pa.Table:
    kept = table.filter(pc.is_null(table[READER_REASON]))
    return kept.select(PAIRS_SCHEMA.names).cast(PAIRS_SCHEMA)


def _quarantine_part(table: pa.Table) -> pa.Table:
    bad = table.filter(pc.is_valid(table[READER_REASON]))
    return pa.Table.from_arrays([bad["id"], bad["source"], bad["stage"], bad[READER_REASON], bad["_quarantine_row"]],
                                schema=QUARANTINE_SCHEMA)


def validated(ds: ray.data.Dataset, cfg: DataConfig, stage: str, *, materialize: bool = False
              ) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """Raw rows -> (good rows in PAIRS_SCHEMA, quarantine rows in QUARANTINE_SCHEMA), both lazy.

    Streaming design: one map_batches runs `validate_pairs` and tags every row with `_quarantine_reason` (null for
    good rows; quarantined rows drop their image bytes there); each returned Dataset is a filter-and-project over
    that one stream, fused by Ray into the same task. Nothing is materialised, so each Dataset you consume runs
    read + validation itself: consuming both decodes every image twice. That is the price of two plain streams.
    `materialize=True` validates once and keeps the tagged rows in Ray's object store (spilled to disk when they
    do not fit) for both Datasets to read: one decode pass, at the cost of holding the images.

    batch_format="pyarrow": binary and list<string> columns cross as Arrow without numpy's object-array and
    ragged-tensor conversions, nulls stay nulls, and the outputs are cast to the schemas exactly.
    """
    checked = ds.map_batches(_check, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "stage": stage})
    if materialize:
        checked = checked.materialize()
    return (checked.map_batches(_good_part, batch_format="pyarrow"),
            checked.map_batches(_quarantine_part, batch_format="pyarrow"))


# --- import: the validated pairs as the run's Parquet splits --------------------------------------------------------


def import_pairs(cfg: DataConfig, out: str | Path) -> dict:
    """Read `cfg.format` at `cfg.path`, validate every row, and write the good pairs as `<out>/<split>/*.parquet`
    and the rest as `<out>/quarantine/import[-<split>].parquet` (`maple.data.splits`). `cfg.split` "auto" assigns
    each pair by its id (`val_fraction`, `test_fraction`) and replaces all three splits; a named split takes every
    pair and replaces only that one (your own held-out set). One decode pass: the validated stream is read once,
    and its batches are routed on the driver (quarantined rows carry no image bytes). Returns the counts."""
    checked = read_pairs(cfg).map_batches(_check, batch_format="pyarrow",
                                          fn_kwargs={"cfg": cfg, "stage": f"import:{cfg.format}"})
    splits = SPLITS if cfg.split == "auto" else (cfg.split,)
    writer = SplitWriter(out, splits, cfg.shard_rows, "import" if cfg.split == "auto" else f"import-{cfg.split}")
    try:
        for batch in checked.iter_batches(batch_format="pyarrow", batch_size=None):
            good = _good_part(batch)
            writer.add(good, cfg.split if cfg.split != "auto" else
                       [split_of(i, cfg.val_fraction, cfg.test_fraction) for i in good["id"].to_pylist()])
            writer.quarantine_rows(_quarantine_part(batch))
        counts = writer.close()
    finally:
        writer.discard()
    return {"output": str(out), **counts}
