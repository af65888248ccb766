"""Checks of one spec field, each raising a `SpecError` that names the field by its path
(`blocks[3].kernel`) and the values it allows."""

from __future__ import annotations

from enum import Enum
from typing import Any

from search_spaces.spec_vocabulary import SpecError

__all__ = ["check_choice", "check_int", "check_number", "enum_value"]


def enum_value(enum: type[Enum], value: Any, path: str) -> Enum:
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise SpecError(f"{path}={value!r} not in {{{allowed}}}") from None


def check_int(value: Any, path: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise SpecError(f"{path}={value!r} must be >= {minimum}")


def check_choice(value: Any, allowed: tuple, path: str) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise SpecError(f"{path}={value!r} not in {{{', '.join(map(str, allowed))}}}")


def check_number(value: Any, path: str, *, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SpecError(f"{path}={value!r} must be a number")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise SpecError(f"{path}={value!r} must be in {bracket}{low}, {high}]")
