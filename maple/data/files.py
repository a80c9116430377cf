"""Outputs that appear whole or not at all: written under a temporary sibling name, then renamed into place.

A stage's output shard is how a re-run knows the work is done (idempotent resume), so a crash must never leave a
half-written file under the final name. Renames within one folder are atomic on POSIX filesystems.
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


def publish(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary file or folder onto `path`, replacing what is there."""
    path = Path(path)
    if Path(tmp).is_dir() and path.exists():
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
    tmp = temporary_path(path)
    discard(tmp)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        discard(tmp)
