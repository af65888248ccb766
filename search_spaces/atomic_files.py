"""Writes a reader (or a crash) never sees half of: a temporary file beside the target, fsync,
rename over it, fsync of the directory. Here, at the bottom of the import order, because every
package writes files that must survive a kill: run files (`nas`), latency tables and fitted
models (`predictors`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def _fsync_directory(path: Path) -> None:
    # makes the rename itself durable; not every platform lets a directory be opened (or fsync'ed)
    with contextlib.suppress(OSError):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def write_atomically(path: str | os.PathLike, payload: bytes | str) -> None:
    """Readers (and a crash) see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload.encode() if isinstance(payload, str) else payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
