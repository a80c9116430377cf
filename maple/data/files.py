"""Outputs that appear whole or not at all: written under a temporary sibling name, then renamed into place.

A stage's output shard is how a re-run knows the work is done (idempotent resume), so a crash must never leave a
half-written file under the final name. Renames within one folder are atomic on POSIX filesystems.

A folder output carries a marker file (OUTPUT_MARKER), and an existing folder is replaced only when it carries one
(or is empty): output paths are user settings (`serve.index=...`), and a typo must not delete someone's data.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path: str | Path) -> Path:
    """The sibling `.<name>.tmp-<pid>` to write `path` under (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


OUTPUT_MARKER = ".maple-output"  # in every folder published here: what may be replaced by the next publish


def check_replaceable(path: str | Path) -> None:
    """Raise unless the folder `path` is absent, empty, or an earlier maple output (it holds OUTPUT_MARKER)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        raise FileExistsError(f"{path} is a {'link' if path.is_symlink() else 'file'}, not a folder maple wrote; "
                              "choose another output path or remove it yourself")
    if not path.is_dir() or (path / OUTPUT_MARKER).is_file():
        return
    found = sorted(p.name for p in path.iterdir())
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise FileExistsError(f"{path} holds files maple did not write ({shown}); maple replaces only its own "
                              f"outputs (marked by {OUTPUT_MARKER}). Choose another output path, or remove the "
                              "folder yourself if it is yours to delete")


def publish(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary file or folder onto `path`, replacing what is there (a folder only when
    `check_replaceable` allows it)."""
    path = Path(path)
    if Path(tmp).is_dir():
        check_replaceable(path)
        (Path(tmp) / OUTPUT_MARKER).write_text("written by maple; the folder is replaced by the next run\n")
        if path.exists():
            shutil.rmtree(path)
    os.replace(tmp, path)


def discard(tmp: str | Path) -> None:
    tmp = Path(tmp)
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write (a file, or a folder the block creates); on success it replaces `path`, on
    an error it is removed and `path` is left as it was."""
    if Path(path).is_dir():
        check_replaceable(path)  # before the work, not after it
    tmp = temporary_path(path)
    discard(tmp)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        discard(tmp)


def clear_partial_output(folder: str | Path, suffix: str = ".parquet") -> None:
    """Remove a folder that an interrupted writer (Ray Data's `write_parquet`) left half-written: only when every
    entry is a file ending in `suffix`; anything else is an error naming the folder."""
    folder = Path(folder)
    if not folder.exists():
        return
    other = [p.name for p in folder.iterdir() if not (p.is_file() and not p.is_symlink() and p.name.endswith(suffix))]
    if other or folder.is_symlink():
        raise FileExistsError(f"{folder} holds {', '.join(sorted(other)[:5]) or 'a link'}, not only {suffix} part "
                              "files of an interrupted write; remove it yourself or choose another output folder")
    shutil.rmtree(folder)


def checkpoint_location(value: str | None, key: str, owner: str, error: type[Exception] = ValueError) -> str:
    """Where `from_pretrained` should load the Hugging Face checkpoint that the setting `key` (e.g. "judge.model")
    names: a local folder as its resolved path, a hub name (`org/model`) as is (offline: only if already cached).
    `owner` (e.g. "judge.backend=hf") is what needs it; `error` says what is wrong (no value, a folder without
    config.json, a path that does not exist) in the caller's exception type."""
    if not value:
        raise error(f"{owner} needs {key}: a local checkpoint folder or a Hugging Face model name")
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise error(f"{key}={value}: the folder has no config.json; point it at a saved Hugging Face checkpoint "
                        "(save_pretrained output)")
        return str(path.resolve())
    if value.startswith(("/", ".", "~")) or value.count("/") > 1:
        raise error(f"{key}={value}: no such folder; fix the path or download the checkpoint")
    return value
