"""`LatencyTable`: measured latency per (part, input shape) of a search space, and the predictor
that sums it over an architecture.

File format (JSON, `schema` "hwnas-latency-table", `schema_version` 1)::

    {
      "schema": "hwnas-latency-table",
      "schema_version": 1,
      "space": "mnasnet" | null,          # the space it was built for (null: hand-made / imported)
      "resolution": 32, "num_classes": 10,
      "metadata": {                       # where and how it was measured
        "backend": "onnxruntime", "device": "...", "cpu_model": "...", "logical_cores": 2,
        "threads": 1, "batch_size": 1, "versions": {...}, "created": "2026-11-22T01:00:00+00:00",
        "source": "measured" | "imported:<format>", ...
      },
      "entries": {                        # key: LayerShape.signature, e.g. "mb_k3_e6_c24_s2_relu6@16x112x112"
        "<signature>": {"median_ms": 0.41, "p10_ms": 0.40, "p90_ms": 0.43, "runs": 150}
      },
      "calibration": null | {"slope": 1.02, "ms_per_mweight": 0.12, "intercept_ms": 0.05, "samples": 50},
      "validation": null | {...}          # figures from `validate_table`
    }

Prediction is the sum of the entries of an architecture's layers (stem, blocks, head); with a
calibration it is `slope * sum + ms_per_mweight * weights / 1e6 + intercept_ms`, where `weights`
is the architecture's conv and linear weight count (`predictors.cost.layer_weights`); see
`validate.py` for why and how it is fitted. A calibration without `ms_per_mweight` (tables
calibrated before it existed) reads it as 0. Both terms are sums over layers, so a calibrated
prediction is still a sum of per-layer costs (`layer_ms`), which ProxylessNAS's expected latency
relies on. Queries never mutate the table.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from predictors.cost import layer_weights
from predictors.latency.measure import Measurement
from search_spaces.atomic_files import write_atomically
from search_spaces.build import LayerShape, layer_shapes
from search_spaces.errors import InputFileError, UserError
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

SCHEMA = "hwnas-latency-table"
SCHEMA_VERSION = 1


def save_json_atomically(path: str | os.PathLike, data: Any) -> None:
    """`data` as JSON, written atomically: a crash mid-write leaves the previous file intact."""
    write_atomically(path, json.dumps(data, indent=1))


def mismatched_settings(model: Any, space: str | None, resolution: int, num_classes: int, backend: str | None,
                        threads: int | None) -> list[str]:
    """What a table or fitted model was made for that differs from what is requested
    (`backend`/`threads`: only when given)."""
    wanted = {"space": space, "resolution": resolution, "num_classes": num_classes}
    have = {"space": model.space, "resolution": model.resolution, "num_classes": model.num_classes}
    for key, value in (("backend", backend), ("threads", threads)):
        if value is not None:
            wanted[key], have[key] = value, model.metadata.get(key)
    return [f"{key}={have[key]!r} (requested {wanted[key]!r})" for key in wanted if have[key] != wanted[key]]


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


@dataclass(frozen=True, slots=True)
class Calibration:
    """measured ≈ slope * (sum of entries) + ms_per_mweight * (millions of weights) + intercept_ms,
    fitted on end-to-end measurements."""

    slope: float
    intercept_ms: float
    samples: int
    ms_per_mweight: float = 0.0

    def apply(self, raw_ms: float, weights: float) -> float:
        """A network's calibrated latency from its summed entries and its weight count."""
        return self.layer_ms(raw_ms, weights) + self.intercept_ms

    def layer_ms(self, raw_ms: float, weights: float) -> float:
        """One layer's share of a calibrated prediction (the intercept is the network's)."""
        return self.slope * raw_ms + self.ms_per_mweight * weights / 1e6

    def __str__(self) -> str:
        return (f"measured = {self.slope:.3f} x sum + {self.ms_per_mweight:.4f} ms per M weights "
                f"{'+' if self.intercept_ms >= 0 else '-'} {abs(self.intercept_ms):.4f} ms ({self.samples} networks)")

    def to_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "ms_per_mweight": self.ms_per_mweight, "intercept_ms": self.intercept_ms,
                "samples": self.samples}


def _calibration(data: Any, source: str) -> Calibration | None:
    """A table's stored calibration, checked: a hand-edited slope of "abc" or -2 would otherwise
    surface as a TypeError or as negative latencies far from where the file was read."""
    if not data:
        return None
    fields = {"slope", "intercept_ms", "samples", "ms_per_mweight"}
    if not isinstance(data, dict) or not {"slope", "intercept_ms", "samples"} <= set(data) <= fields:
        raise LatencyTableError(f"{source}: calibration must be an object with slope, intercept_ms, samples "
                                f"(and optionally ms_per_mweight); found {data!r}")
    for name in fields & set(data):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LatencyTableError(f"{source}: calibration.{name}={value!r}: expected a finite number")
    for name in ("slope", "ms_per_mweight"):  # the fit holds both >= 0: more work is never faster
        if data.get(name, 0.0) < 0:
            raise LatencyTableError(f"{source}: calibration.{name}={data[name]!r}: expected >= 0 "
                                    "(rerun `nas lut validate` to refit)")
    return Calibration(**data)


@lru_cache(maxsize=16384)
def arch_layers(arch: ArchSpec) -> tuple[tuple[str, str, int], ...]:
    """(layer name, signature, weights) of every layer; cached because searches query the same
    architectures many times and the specs are immutable."""
    return tuple((layer.name, layer.signature, layer_weights(layer)) for layer in layer_shapes(arch))


def arch_signatures(arch: ArchSpec) -> tuple[tuple[str, str], ...]:
    """(layer name, signature) of every layer."""
    return tuple((name, key) for name, key, _ in arch_layers(arch))


class LatencyTable:
    def __init__(
        self,
        metadata: dict[str, Any],
        entries: dict[str, Measurement] | None = None,
        *,
        space: str | None = None,
        resolution: int | None = None,
        num_classes: int | None = None,
        calibration: Calibration | None = None,
        validation: dict[str, Any] | None = None,
    ) -> None:
        self.metadata = dict(metadata)
        self.metadata.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.entries: dict[str, Measurement] = dict(entries or {})
        self.space = space
        self.resolution = resolution
        self.num_classes = num_classes
        self.calibration = calibration
        self.validation = validation

    # -- queries -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    @property
    def label(self) -> str:
        where = self.metadata.get("device", "?")
        return f"latency table ({self.space or 'no space'}, {self.metadata.get('backend', '?')} on {where})"

    def missing(self, arch: ArchSpec) -> list[str]:
        return [key for _, key in arch_signatures(arch) if key not in self.entries]

    def layer_latencies(self, arch: ArchSpec) -> list[tuple[str, str, float]]:
        """(layer name, table key, median ms) per layer; raises `MissingEntriesError` listing every
        missing key rather than guessing."""
        signatures = arch_signatures(arch)
        missing = [key for _, key in signatures if key not in self.entries]
        if missing:
            raise MissingEntriesError(missing, self.label)
        return [(name, key, self.entries[key].median_ms) for name, key in signatures]

    def predict(self, arch: ArchSpec, *, calibrated: bool = True) -> float:
        """Predicted end-to-end latency in ms."""
        entries, layers = self.entries, arch_layers(arch)
        try:
            raw = sum(entries[key].median_ms for _, key, _ in layers)
        except KeyError:
            raise MissingEntriesError(self.missing(arch), self.label) from None
        if calibrated and self.calibration is not None:
            return self.calibration.apply(raw, sum(weights for _, _, weights in layers))
        return raw

    def layer_ms(self, layer: LayerShape, *, calibrated: bool = True) -> float:
        """One layer's cost: its entry, or with a calibration its share of the calibrated sum
        (`predict` = intercept + sum of `layer_ms` over the layers)."""
        if layer.signature not in self.entries:
            raise MissingEntriesError([layer.signature], self.label)
        raw = self.entries[layer.signature].median_ms
        if calibrated and self.calibration is not None:
            return self.calibration.layer_ms(raw, layer_weights(layer))
        return raw

    def quantile(self, space: SearchSpace, q: float, n: int, seed: int) -> float:
        """The q-quantile of the predicted latency of `n` architectures sampled from `space` with
        `np.random.default_rng(seed)`: a budget that a known share of the space meets, whatever
        this machine's speed."""
        rng = np.random.default_rng(seed)
        return float(np.quantile([self.predict(space.sample(rng)) for _ in range(n)], q))

    @property
    def intercept_ms(self) -> float:
        """The calibrated prediction's per-network constant (0 without a calibration)."""
        return self.calibration.intercept_ms if self.calibration is not None else 0.0

    # -- changes -----------------------------------------------------------------------------------
    def add(self, key: str, measurement: Measurement) -> None:
        self.entries[key] = measurement

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "space": self.space,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "metadata": self.metadata,
            "entries": {key: m.to_dict() for key, m in sorted(self.entries.items())},
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "validation": self.validation,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise LatencyTableError(f"{source}: not a latency table (schema={found!r}, expected {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise LatencyTableError(
                f"{source}: schema_version={data.get('schema_version')!r} not in {{{SCHEMA_VERSION}}}; "
                "rebuild the table with this version of the tool"
            )
        entries_data = data.get("entries")
        if not isinstance(entries_data, dict):
            raise LatencyTableError(f"{source}: 'entries' must be an object of signature -> measurement")
        entries = {}
        for key, value in entries_data.items():
            try:
                entries[key] = Measurement.from_dict(value)
            except (TypeError, ValueError, AttributeError) as error:
                raise LatencyTableError(f"{source}: entries[{key!r}] is invalid: {error}") from None
        calibration = _calibration(data.get("calibration"), source)
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise LatencyTableError(f"{source}: 'metadata' must be an object, not {type(metadata).__name__}")
        return cls(
            metadata=metadata,
            entries=entries,
            space=data.get("space"),
            resolution=data.get("resolution"),
            num_classes=data.get("num_classes"),
            calibration=calibration,
            validation=data.get("validation"),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Atomic: a crash mid-write leaves the previous file intact (builds resume from it)."""
        save_json_atomically(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"latency table {path} " + ("is a directory, not a table file" if path.is_dir() else
                                                              "does not exist"))
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LatencyTableError(f"{path}: corrupt latency table (not valid JSON: {error})") from None
        return cls.from_dict(data, source=str(path))

    def check_fits(self, *, space: str | None, resolution: int, num_classes: int, backend: str | None = None,
                   threads: int | None = None, source: str = "table") -> None:
        """Refuse to extend a table measured for something else (never silently mix devices)."""
        if wrong := mismatched_settings(self, space, resolution, num_classes, backend, threads):
            raise LatencyTableError(f"{source} was built for other settings: {', '.join(wrong)}; use another path")

