"""Compression policies as data: one versioned JSON envelope shared by every policy kind.

A policy says, per layer, what to do to it (a prune ratio, a bit width, ...). Whatever the kind,
the file looks like this::

    {
      "schema": "hwnas-compress-policy",
      "schema_version": 1,
      "kind": "prune",                        # who reads it: "prune", "quantize", ...
      "settings": {"criterion": "l1", "round_to": 8},   # kind-specific, whole-model values
      "layers": {"blocks.1": 0.5, "blocks.2": 0.25}     # layer name -> kind-specific value
    }

Layer names are the spec's (`"stem"`, `"blocks.3"`, `"head"`) plus any suffix a kind defines
(`"blocks.3.out"` for pruning). This module checks the envelope and offers the checks every kind
needs, with errors that name the layer and say what would be allowed; what a value *means* is
up to the kind's own module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces.errors import InputFileError, UserError

SCHEMA = "hwnas-compress-policy"
SCHEMA_VERSION = 1


class PolicyError(UserError, ValueError):
    """A policy is malformed or does not fit the architecture; the message names the layer."""


@dataclass(frozen=True)
class PolicyEnvelope:
    """The kind-independent part of a policy file."""

    kind: str
    layers: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "settings": dict(self.settings),
            # sorted so equal policies serialise to identical files (diffable, hashable)
            "layers": {name: self.layers[name] for name in sorted(self.layers, key=layer_sort_key)},
        }

    @classmethod
    def from_dict(cls, data: Any, kind: str | None = None) -> PolicyEnvelope:
        """Parse and check the envelope; `kind` set means only that kind is accepted."""
        if not isinstance(data, dict):
            raise PolicyError(f"a policy must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise PolicyError(f"schema={data.get('schema')!r}: not a compression policy (expected {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PolicyError(f"schema_version={data.get('schema_version')!r} not in {{{SCHEMA_VERSION}}}")
        known = {"schema", "schema_version", "kind", "settings", "layers"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown field(s) {unknown}; allowed: {sorted(known)}")
        found = data.get("kind")
        if not isinstance(found, str) or (kind is not None and found != kind):
            raise PolicyError(f"kind={found!r}, expected {kind!r}" if kind else f"kind={found!r} must be a string")
        layers, settings = data.get("layers"), data.get("settings", {})
        if not isinstance(layers, dict) or not all(isinstance(name, str) for name in layers):
            raise PolicyError("layers must be an object of layer name -> value")
        if not isinstance(settings, dict):
            raise PolicyError(f"settings must be an object, got {type(settings).__name__}")
        return cls(found, dict(layers), dict(settings))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, kind: str | None = None) -> PolicyEnvelope:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyError(f"not valid JSON: {error}") from None
        return cls.from_dict(data, kind)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str | None = None) -> PolicyEnvelope:
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"policy file {path} does not exist")
        try:
            text = path.read_text()
        except UnicodeDecodeError as error:
            raise PolicyError(f"{path}: not a policy (not UTF-8 text: {error})") from None
        return cls.from_json(text, kind)


def layer_sort_key(name: str) -> tuple:
    """Network order: stem, blocks (numeric parts as numbers: "blocks.10" after "blocks.9"), head."""
    head, _, _ = name.partition(".")
    rank = {"stem": 0, "blocks": 1, "head": 2}.get(head, 3)
    return (rank, *((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")))


def check_layers(kind: str, names: Iterable[str], allowed: Mapping[str, str | None]) -> None:
    """Every name must be a key of `allowed` whose value is None; a string value is the reason
    that layer exists but cannot take this policy (it is quoted in the error)."""
    usable = sorted((name for name, reason in allowed.items() if reason is None), key=layer_sort_key)
    listing = ", ".join(usable) if usable else "(none)"
    for name in names:
        if name not in allowed:
            raise PolicyError(f"{kind} policy: unknown layer {name!r}; layers that accept it: {listing}")
        reason = allowed[name]
        if reason is not None:
            raise PolicyError(f"{kind} policy: layer {name!r} {reason}; layers that accept it: {listing}")


def check_number(kind: str, layer: str, value: Any, low: float, high: float) -> float:
    """A finite number in [low, high], returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{kind} policy: {layer}={value!r} must be a number in [{low}, {high}]")
    if not low <= value <= high:
        raise PolicyError(f"{kind} policy: {layer}={value!r} out of range; allowed: [{low}, {high}]")
    return float(value)


def check_choice(kind: str, layer: str, value: Any, allowed: Collection[Any]) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise PolicyError(f"{kind} policy: {layer}={value!r} not in {{{', '.join(map(str, allowed))}}}")
    return value
