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
import os
from datetime import datetime, timezone
from functools import lru_cache
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictors.cost import layer_weights
from predictors.latency.calibration import Calibration, read_calibration
from predictors.latency.measure import Measurement
from predictors.latency.precision import (
    FP32,
    PRECISIONS,
    LayerCost,
    PrecisionSection,
    arch_tensor_shapes,
    check_precision,
    layer_precisions,
    read_measurements,
    transitions,
)
from predictors.latency.table_errors import LatencyTableError, MissingEntriesError
from search_spaces.atomic_files import write_atomically
from search_spaces.build import LayerShape, layer_shapes
from search_spaces.errors import InputFileError
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
        sections: dict[str, PrecisionSection] | None = None,
    ) -> None:
        self.metadata = dict(metadata)
        self.metadata.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.entries: dict[str, Measurement] = dict(entries or {})  # fp32
        self.space = space
        self.resolution = resolution
        self.num_classes = num_classes
        self.calibration = calibration  # fp32's; other precisions keep theirs in their section
        self.validation = validation
        self.sections: dict[str, PrecisionSection] = dict(sections or {})  # precisions other than fp32

    # -- queries -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    @property
    def label(self) -> str:
        where = self.metadata.get("device", "?")
        return f"latency table ({self.space or 'no space'}, {self.metadata.get('backend', '?')} on {where})"

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this table holds (`metadata["precisions"]`; a table without it: fp32)."""
        return tuple(self.metadata.get("precisions", (FP32,)))

    def _held(self, precision: str) -> str:
        if precision not in self.precisions:
            check_precision(precision)
            raise LatencyTableError(
                f"{self.label} holds precision(s) {', '.join(self.precisions)}, not {precision!r}; "
                f"measure it with `nas lut build --precision {precision}` on the same file")
        return precision

    def entries_for(self, precision: str = FP32) -> dict[str, Measurement]:
        """The layer entries of one precision (raises `LatencyTableError` for one it lacks)."""
        return self.entries if self._held(precision) == FP32 else self.sections[precision].entries

    def calibration_for(self, precision: str = FP32) -> Calibration | None:
        return self.calibration if self._held(precision) == FP32 else self.sections[precision].calibration

    def missing(self, arch: ArchSpec, precision: str = FP32) -> list[str]:
        entries = self.entries_for(precision)
        return [key for _, key in arch_signatures(arch) if key not in entries]

    def layer_latencies(self, arch: ArchSpec, precision: str = FP32) -> list[tuple[str, str, float]]:
        """(layer name, table key, median ms) per layer at one precision; raises
        `MissingEntriesError` listing every missing key rather than guessing."""
        entries, signatures = self.entries_for(precision), arch_signatures(arch)
        missing = [key for _, key in signatures if key not in entries]
        if missing:
            raise MissingEntriesError(missing, self.label if precision == FP32 else f"{self.label} [{precision}]")
        return [(name, key, entries[key].median_ms) for name, key in signatures]

    def predict(self, arch: ArchSpec, *, calibrated: bool = True, precision: str = FP32) -> float:
        """Predicted end-to-end latency in ms, every layer at `precision`."""
        if precision != FP32:
            return self.predict_mixed(arch, [precision] * len(arch_layers(arch)), calibrated=calibrated)
        self._held(FP32)
        entries, layers = self.entries, arch_layers(arch)
        try:
            raw = sum(entries[key].median_ms for _, key, _ in layers)
        except KeyError:
            raise MissingEntriesError(self.missing(arch), self.label) from None
        if calibrated and self.calibration is not None:
            return self.calibration.apply(raw, sum(weights for _, _, weights in layers))
        return raw

    def predict_mixed(self, arch: ArchSpec, precisions: Sequence[str] | Mapping[str, str], *,
                      calibrated: bool = True) -> float:
        """Predicted latency with each layer at its own precision (see `layer_costs`)."""
        chosen = layer_precisions([name for name, _, _ in arch_layers(arch)], precisions)
        costs = self.layer_costs(arch, chosen, calibrated=calibrated)
        return self.mixed_intercept_ms(chosen, calibrated) + sum(cost.ms for cost in costs)

    def layer_costs(self, arch: ArchSpec, precisions: Sequence[str] | Mapping[str, str], *,
                    calibrated: bool = True) -> list[LayerCost]:
        """Each layer's cost at its precision (a sequence, one per layer in the order stem, blocks,
        head; or {layer name: precision}, absent layers fp32), and a transition row (Q or DQ of that
        tensor, `precision.py`) wherever the precision changes, the float input and output
        included. Calibrated, a layer row is its share under its precision's calibration, a
        transition row is scaled by the slope of the non-fp32 side; the network's constant is
        `mixed_intercept_ms`, so `predict_mixed` = intercept + the sum of the rows."""
        layers = arch_layers(arch)
        chosen = layer_precisions([name for name, _, _ in layers], precisions)
        missing = [f"{key} [{p}]" for (_, key, _), p in zip(layers, chosen) if key not in self.entries_for(p)]
        moves = {i: (key, p) for i, key, p in transitions(arch_tensor_shapes(arch), chosen)}
        missing += [f"{key} [{p}]" for key, p in moves.values() if key not in self.sections[p].transitions]
        if missing:
            raise MissingEntriesError(missing, self.label)
        rows = []
        for index, ((name, key, weights), precision) in enumerate(zip(layers, chosen)):
            if index in moves:
                rows.append(self._transition_row(f"{name} input", *moves[index], calibrated))
            raw = self.entries_for(precision)[key].median_ms
            calibration = self.calibration_for(precision) if calibrated else None
            rows.append(LayerCost(name, key, precision, calibration.layer_ms(raw, weights) if calibration else raw))
        if len(layers) in moves:
            rows.append(self._transition_row(f"{layers[-1][0]} output", *moves[len(layers)], calibrated))
        return rows

    def _transition_row(self, name: str, key: str, precision: str, calibrated: bool) -> LayerCost:
        raw = self.sections[precision].transitions[key].median_ms
        calibration = self.calibration_for(precision) if calibrated else None
        return LayerCost(name, key, precision, calibration.slope * raw if calibration else raw)

    def mixed_intercept_ms(self, precisions: Sequence[str], calibrated: bool = True) -> float:
        """A mixed network's constant: the precisions' calibrated intercepts weighted by how many
        layers run at each (equal to the one intercept when all layers share a precision)."""
        if not calibrated or not precisions:
            return 0.0
        intercepts = [(c.intercept_ms if (c := self.calibration_for(p)) is not None else 0.0) for p in precisions]
        return sum(intercepts) / len(intercepts)

    def layer_ms(self, layer: LayerShape, *, calibrated: bool = True, precision: str = FP32) -> float:
        """One layer's cost: its entry, or with a calibration its share of the calibrated sum
        (for fp32, `predict` = intercept + sum of `layer_ms` over the layers; at int8 the
        network's input quantize and output dequantize come on top, see `layer_costs`)."""
        entries = self.entries_for(precision)
        if layer.signature not in entries:
            raise MissingEntriesError([layer.signature], self.label)
        raw = entries[layer.signature].median_ms
        calibration = self.calibration_for(precision)
        if calibrated and calibration is not None:
            return calibration.layer_ms(raw, layer_weights(layer))
        return raw

    def quantile(self, space: SearchSpace, q: float, n: int, seed: int, precision: str = FP32) -> float:
        """The q-quantile of the predicted latency of `n` architectures sampled from `space` with
        `np.random.default_rng(seed)`: a budget that a known share of the space meets, whatever
        this machine's speed."""
        rng = np.random.default_rng(seed)
        return float(np.quantile([self.predict(space.sample(rng), precision=precision) for _ in range(n)], q))

    @property
    def intercept_ms(self) -> float:
        """The calibrated prediction's per-network constant (0 without a calibration)."""
        return self.calibration.intercept_ms if self.calibration is not None else 0.0

    # -- changes -----------------------------------------------------------------------------------
    def add_precision(self, precision: str, metadata: dict[str, Any]) -> None:
        """Start holding `precision` (a no-op when held); `metadata` says how it is measured."""
        check_precision(precision)
        if precision in self.precisions:
            return
        self.metadata["precisions"] = [p for p in PRECISIONS if p in (*self.precisions, precision)]
        if precision != FP32:
            self.sections[precision] = PrecisionSection(metadata=dict(metadata))

    def add(self, key: str, measurement: Measurement, precision: str = FP32) -> None:
        self.entries_for(precision)[key] = measurement

    def add_transition(self, key: str, measurement: Measurement, precision: str) -> None:
        if self._held(precision) == FP32:
            raise LatencyTableError("transitions belong to a precision other than fp32 (fp32 is the float side)")
        self.sections[precision].transitions[key] = measurement

    def set_calibration(self, precision: str, calibration: Calibration | None,
                        validation: dict[str, Any] | None) -> None:
        if self._held(precision) == FP32:
            self.calibration, self.validation = calibration, validation
        else:
            self.sections[precision].calibration = calibration
            self.sections[precision].validation = validation

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
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
        if self.sections:  # absent for fp32 tables, whose files stay as they were
            data["precisions"] = {p: section.to_dict() for p, section in sorted(self.sections.items())}
        return data

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
        if not isinstance(data.get("entries"), dict):
            raise LatencyTableError(f"{source}: 'entries' must be an object of signature -> measurement")
        entries = read_measurements(data["entries"], f"{source}: entries")
        calibration = read_calibration(data.get("calibration"), source)
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
            sections=_sections(data, metadata, source),
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


def _sections(data: dict[str, Any], metadata: dict[str, Any], source: str) -> dict[str, PrecisionSection]:
    """The non-fp32 sections, checked against `metadata["precisions"]`: each listed precision has
    its section and each section is listed."""
    held = metadata.get("precisions", [FP32])
    if not isinstance(held, list) or not held or len(set(held)) != len(held):
        raise LatencyTableError(f"{source}: metadata.precisions={held!r}: expected a list of distinct "
                                f"precisions from {', '.join(PRECISIONS)}")
    for precision in held:
        check_precision(precision, f"{source}: metadata.precisions item")
    stored = data.get("precisions") or {}
    if not isinstance(stored, dict):
        raise LatencyTableError(f"{source}: 'precisions' must be an object of precision -> section")
    wanted = sorted(set(held) - {FP32})
    if sorted(stored) != wanted:
        raise LatencyTableError(f"{source}: 'precisions' holds sections {sorted(stored)}, but metadata.precisions "
                                f"lists {held!r} (expected sections {wanted})")
    return {p: PrecisionSection.from_dict(section, f"{source}: precisions.{p}") for p, section in stored.items()}
