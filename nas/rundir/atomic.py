"""Writes a reader (or a crash) never sees half of: temporary file, fsync, rename, fsync of the
directory; and the strict-JSON conversion every run file goes through."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "now_iso", "write_atomically", "write_json_atomic"]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def json_safe(value: Any) -> Any:
    """Strict-JSON copy: NaN/inf become None (JSON has no spelling for them), tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def _fsync_directory(path: Path) -> None:
    # makes the rename itself durable; not every platform lets a directory be opened (or fsync'ed)
    with contextlib.suppress(OSError):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def write_atomically(path: str | os.PathLike, payload: bytes | str) -> None:
    """Readers (and a crash) see the old file or the new one, never half: write a temporary file
    beside it, fsync, rename it over the target, fsync the directory."""
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


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    write_atomically(path, text)
