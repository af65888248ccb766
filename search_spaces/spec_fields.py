"""Checks of one spec field, each raising a `SpecError` that names the field by its path
(`blocks[3].kernel`) and the values it allows."""

from __future__ import annotations

from enum import Enum
from typing import Any

from search_spaces.spec_vocabulary import SpecError

__all__ = ["check_choice", "check_int", "check_number", "enum_value", "normalize_ranks", "ranks_from_string",
           "put_ranks", "ranks_to_json", "ranks_to_string"]


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


def normalize_ranks(value: Any, path: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """`ranks` of a block or head: layer name inside the part -> one rank (SVD: a k x k conv or a
    linear layer becomes two) or [r_in, r_out] (Tucker-2: a k x k conv becomes three). Accepted as
    a JSON object or as the normalised form (pairs sorted by name, each rank a tuple), so the
    spec stays hashable and equal ranks give equal specs."""
    if value == () or value == {}:  # every spec without ranks passes here: keep it cheap
        return ()
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)) and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in value):
        items = [tuple(item) for item in value]
    else:
        raise SpecError(f"{path}={value!r} must be an object of layer name -> rank or [r_in, r_out]")
    out = []
    for name, ranks in items:
        if not isinstance(name, str) or not name:
            raise SpecError(f"{path}: layer name {name!r} must be a non-empty string")
        ranks = (ranks,) if isinstance(ranks, int) and not isinstance(ranks, bool) else ranks
        if not isinstance(ranks, (tuple, list)) or len(ranks) not in (1, 2):
            raise SpecError(f"{path}.{name}={ranks!r} must be a rank (int) or [r_in, r_out]")
        for rank in ranks:
            check_int(rank, f"{path}.{name}", minimum=1)
        out.append((name, tuple(ranks)))
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: layer names repeat: {names}")
    return tuple(sorted(out))


def ranks_to_json(ranks: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, Any]:
    return {name: r[0] if len(r) == 1 else list(r) for name, r in ranks}


def ranks_to_string(ranks: tuple[tuple[str, tuple[int, ...]], ...]) -> str:
    """`lr[conv_a=4x6,conv_b=8]`: the ranks in a block string or a latency-table key."""
    return "lr[" + ",".join(f"{name}={'x'.join(map(str, r))}" for name, r in ranks) + "]"


def ranks_from_string(text: str, path: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Inverse of `ranks_to_string` for the part inside the brackets."""
    pairs = {}
    for item in filter(None, text.split(",")):
        name, sep, raw = item.partition("=")
        try:
            pairs[name] = [int(r) for r in raw.split("x")] if sep else None
        except ValueError:
            pairs[name] = None
        if pairs[name] is None:
            raise SpecError(f"{path}: rank {item!r} must be name=R or name=RinxRout")
    return normalize_ranks(pairs, path)


def put_ranks(out: dict[str, Any], ranks: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, Any]:
    """`out["ranks"]` as JSON, or no key at all when there are none: specs written before ranks
    existed keep their JSON and content hash."""
    out.pop("ranks", None)
    if ranks:
        out["ranks"] = ranks_to_json(ranks)
    return out
