"""Readers: image-text pairs from Parquet, WebDataset tar shards, a COCO-style captions JSON or the synthetic world,
streamed into Ray Datasets of raw rows, then split into good and quarantined rows by `validated`.

Every reader returns the same raw columns (`RAW_SCHEMA`): `id`, `image` (encoded bytes), `captions`, `source`,
`annotation`, and `_quarantine_reason`, set where the reader already knows a row is unusable (a COCO image file that
does not exist, a WebDataset JSON that does not parse). Nothing is decoded on the driver; image bytes are read by the
read tasks (Parquet, WebDataset) or by a map stage (COCO), never collected.

Usage:
    raw = read_pairs(cfg.data)
    good, quarantine = validated(raw, cfg.data, stage="pairs")
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from maple.data.config import DataConfig
from maple.data.schema import PAIRS_SCHEMA, QUARANTINE_SCHEMA
from maple.data.validate import READER_REASON, validate_pairs

RAW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("captions", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("annotation", pa.string()),
        pa.field(READER_REASON, pa.string()),
    ]
)

# Parquet column names accepted for each field, in order of preference (PAIRS_SCHEMA's own name first).
PARQUET_COLUMNS = {
    "id": ("id", "key", "image_id"),
    "image": ("image", "jpg", "png", "image_bytes"),
    "captions": ("captions", "caption", "text"),
    "source": ("source",),
    "annotation": ("annotation",),
}
_REQUIRED = ("id", "image", "captions")

WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
WEBDATASET_TEXT_KEYS = ("txt", "text")


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


# --- Parquet ------------------------------------------------------------------------------------------------------


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _parquet_mapping(schema: pa.Schema, file: str) -> dict[str, str]:
    """{field: column} for one shard's schema; a missing or mistyped column is an error naming the file."""
    mapping: dict[str, str] = {}
    for field, names in PARQUET_COLUMNS.items():
        found = next((n for n in names if n in schema.names), None)
        if found is None:
            if field in _REQUIRED:
                raise ValueError(
                    f"{file}: no column for {field!r} (looked for {', '.join(names)}); the shard has columns "
                    f"{schema.names}. Rename the column or convert the shard to maple.data.schema.PAIRS_SCHEMA.")
            continue
        t = schema.field(found).type
        ok = {
            "id": _is_text(t) or pa.types.is_integer(t),
            # Hugging Face `datasets` stores images as struct<bytes: binary, path: string>.
            "image": _is_bytes(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0),
            "captions": _is_text(t) or ((pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)),
            "source": _is_text(t),
            "annotation": _is_text(t),
        }[field]
        if not ok:
            raise ValueError(f"{file}: column {found!r} ({field}) has type {t}, which maple cannot read as {field}; "
                             f"expected {PAIRS_SCHEMA.field(field).type}.")
        mapping[field] = found
    return mapping


def _raw_from_parquet(table: pa.Table, mapping: dict[str, str]) -> pa.Table:
    n = table.num_rows
    image = table[mapping["image"]]
    if pa.types.is_struct(image.type):
        image = pc.struct_field(image, "bytes")
    captions = table[mapping["captions"]]
    if _is_text(captions.type):
        captions = pa.array([None if c is None else [c] for c in captions.to_pylist()], pa.list_(pa.string()))
    source = table["path"]  # the shard, from include_paths
    if "source" in mapping:  # a source written by an earlier conversion wins; the shard path fills the gaps
        source = pc.coalesce(table[mapping["source"]].cast(pa.string()), source.cast(pa.string()))
    annotation = table[mapping["annotation"]] if "annotation" in mapping else pa.nulls(n, pa.string())
    return pa.Table.from_arrays(
        [table[mapping["id"]].cast(pa.string()), image.cast(pa.binary()), captions.cast(pa.list_(pa.string())),
         source.cast(pa.string()), annotation.cast(pa.string()), pa.nulls(n, pa.string())],
        schema=RAW_SCHEMA)


def read_parquet_pairs(path: str | list[str] | None, source_from_path: bool = False) -> ray.data.Dataset:
    """Parquet shards (a file, folder or glob, or a list of files) -> raw rows. The first shard's schema is checked up
    front. `source_from_path`: every row's source is its shard file, whatever a source column says (for stages whose
    output and resume go by input shard)."""
    if isinstance(path, list):
        fs, files = _filesystem(path[0])[0], [_filesystem(p)[1] for p in path]
    else:
        fs, files = _list_files(path, "parquet", "Parquet shards of image-text pairs")
    with fs.open_input_file(files[0]) as f:
        mapping = _parquet_mapping(pq.read_schema(f), files[0])
    if source_from_path:
        mapping.pop("source", None)
    # Ray's footer-reader pool size: maple.runtime.init_ray sets RAY_DATA_PARQUET_FOOTER_NUM_ACTORS.
    ds = ray.data.read_parquet(files, filesystem=fs, include_paths=True)
    ds = ds.select_columns(sorted(set(mapping.values())) + ["path"])
    return ds.map_batches(_raw_from_parquet, batch_format="pyarrow", fn_kwargs={"mapping": mapping})


# --- WebDataset ---------------------------------------------------------------------------------------------------


def _webdataset_row(sample: dict) -> dict:
    """One `read_webdataset(decoder=None)` row ({"__key__", "__url__", "<ext>": bytes | None}) -> a raw row.
    Captions: every non-blank line of the .txt, then the .json's "captions" list or "caption" string."""
    row = {"id": sample.get("__key__"), "image": None, "captions": None, "source": sample.get("__url__"),
           "annotation": None, READER_REASON: None}
    by_ext = {k.rsplit(".", 1)[-1].lower(): v for k, v in sample.items()
              if not k.startswith("__") and v is not None}
    row["image"] = next((by_ext[k] for k in WEBDATASET_IMAGE_KEYS if k in by_ext), None)
    captions: list[str] | None = None
    try:
        for key in WEBDATASET_TEXT_KEYS:
            if key in by_ext:
                captions = (captions or []) + [line for line in by_ext[key].decode("utf-8").splitlines()
                                               if line.strip()]
        if "json" in by_ext:
            meta = json.loads(by_ext["json"])
            found = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
            if isinstance(found, str):
                found = [found]
            if isinstance(found, list):
                captions = (captions or []) + [c for c in found if c not in (captions or [])]
            elif found is not None:
                row[READER_REASON] = "wrong_type:captions"
    except UnicodeDecodeError:
        row[READER_REASON] = "corrupt_text"
    except json.JSONDecodeError:
        row[READER_REASON] = "corrupt_json"
    if captions is not None and not all(isinstance(c, str) for c in captions):
        row[READER_REASON] = row[READER_REASON] or "wrong_type:captions"
        captions = [str(c) for c in captions]
    row["captions"] = captions
    return row


def _raw_from_webdataset(table: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([_webdataset_row(s) for s in table.to_pylist()], schema=RAW_SCHEMA)


def read_webdataset_pairs(path: str | None) -> ray.data.Dataset:
    """WebDataset tar shards -> raw rows; id = the sample's `__key__`, source = the shard's url."""
    fs, files = _list_files(path, "tar", "WebDataset tar shards")
    # decoder=None keeps raw bytes: Ray's default decoder would decode images to arrays in the read task and
    # fail the whole shard on one corrupt image, where we want that one row quarantined.
    ds = ray.data.read_webdataset(files, filesystem=fs, decoder=None)
    return ds.map_batches(_raw_from_webdataset, batch_format="pyarrow")


# --- COCO-style captions JSON ------------------------------------------------------------------------------------


def coco_rows(captions_json: str | Path, source: str | None = None) -> list[dict]:
    """A COCO/Flickr-style captions JSON -> one row per image with its captions grouped, in file order, plus a
    quarantine-marked row per annotation whose image_id names no image. Images are not read here."""
    data = json.loads(Path(captions_json).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{captions_json}: expected a COCO captions JSON with 'images' and 'annotations' lists")
    source = source or str(captions_json)
    captions: dict[str, list[str]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"{captions_json}: annotations[{k}] has no 'image_id'")
        captions[str(ann["image_id"])].append(ann.get("caption"))
    rows, seen = [], set()
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError(f"{captions_json}: images[{k}] needs 'id' and 'file_name'")
        image_id = str(img["id"])
        seen.add(image_id)
        rows.append({"id": image_id, "file_name": str(img["file_name"]), "captions": captions.get(image_id, []),
                     "source": source, "annotation": None, READER_REASON: None})
    for image_id, caps in captions.items():
        if image_id not in seen:
            rows.append({"id": image_id, "file_name": None, "captions": caps, "source": source,
                         "annotation": None, READER_REASON: "unknown_image_id"})
    return rows


def _read_image_files(table: pa.Table, image_root: str) -> pa.Table:
    """Map stage: read each row's image file under `image_root`; a missing file marks the row, never fails."""
    fs, root = _filesystem(image_root)
    rows = table.to_pylist()
    for row in rows:
        name = row.pop("file_name")
        if row[READER_REASON] is not None:
            row["image"] = None
            continue
        path = os.path.normpath(os.path.join(root, name))
        if not path.startswith(root.rstrip("/") + "/"):
            row["image"], row[READER_REASON] = None, "bad_file_name"  # absolute, or ".." out of the image root
            continue
        try:
            with fs.open_input_file(path) as f:
                row["image"] = f.read()
        except FileNotFoundError:
            row["image"], row[READER_REASON] = None, "missing_file"
        except OSError:
            row["image"], row[READER_REASON] = None, "unreadable_file"
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def read_coco_pairs(captions_json: str | None, image_root: str | None) -> ray.data.Dataset:
    """A COCO-style captions JSON + its image folder (local paths) -> raw rows (id = the image id, source = the
    JSON). The JSON is parsed on the driver (ids, file names and captions only); image bytes are read by a map
    stage. `image_root` defaults to the JSON's folder."""
    if not captions_json:
        raise ValueError("data.path is not set: name the COCO captions JSON")
    if not Path(captions_json).is_file():
        raise FileNotFoundError(f"data.path={captions_json!r}: COCO captions JSON not found")
    image_root = image_root or str(Path(captions_json).parent)
    if not Path(image_root).is_dir():
        raise FileNotFoundError(f"data.image_root={image_root!r} is not a folder")
    rows = coco_rows(captions_json)  # metadata only: ids, file names, captions
    items = pa.Table.from_pylist(rows, schema=RAW_SCHEMA.remove(1).append(pa.field("file_name", pa.string())))
    # Several input blocks so that the image reads spread over the cluster; small batches, since each becomes a
    # block of image bytes.
    ds = ray.data.from_arrow([items.slice(k, 1024) for k in range(0, max(items.num_rows, 1), 1024)])
    return ds.map_batches(_read_image_files, batch_format="pyarrow", batch_size=256,
                          fn_kwargs={"image_root": os.path.abspath(image_root)})


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
    if cfg.format == "synthetic":
        return read_parquet_pairs(synthetic_train_dir(cfg.path))
    raise ValueError(f"data.format={cfg.format!r} is not one of synthetic, parquet, webdataset, coco")


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
