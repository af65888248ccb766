"""The strict-JSON conversion every run file goes through, written atomically
(`search_spaces.atomic_files.write_atomically`, re-exported here)."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from typing import Any

from search_spaces.atomic_files import write_atomically

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


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    write_atomically(path, text)
