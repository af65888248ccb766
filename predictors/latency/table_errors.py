"""The errors of latency tables, in their own module so that the table (`lut.py`) and the parts it
is made of (`calibration.py`, `precision.py`) can all raise them without importing each other."""

from __future__ import annotations

from search_spaces.errors import UserError


class LatencyTableError(UserError, ValueError):
    """A table file is corrupt, of another schema, or does not fit the request."""


class MissingEntriesError(LatencyTableError, KeyError):
    """An architecture contains layers the table has not measured."""

    def __init__(self, keys: list[str], table: str = "table") -> None:
        self.keys = keys
        listed = "\n  ".join(keys)
        super().__init__(f"{table} lacks {len(keys)} layer(s) of this architecture:\n  {listed}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
