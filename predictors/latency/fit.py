"""A latency model for a device from a few whole-model measurements: `fit_latency_model` and the
`FittedLatencyModel` it returns (a `LatencyPredictor`, so a search budget, a report or a model card take
it wherever they take a table).

Model (additive, so every prediction is an intercept plus per-layer costs)::

    latency(arch) = b + g * prior(arch) + sum over the arch's layers of delta[signature]
    prior(arch)   = mean over sources k of S_k(arch) / mean_k

`S_k` is source table k's prediction (another device: HW-NAS-Bench's per-op tables, or a table
fitted to another phone's whole-model measurements), `mean_k` its mean over 256 architectures
sampled from the space, so each source weighs the same; without sources the prior is MACs.
`b, g` map the prior affinely; `delta` is a per-signature correction shrunk toward zero (ridge
penalty `lambda`; infinite: none), so with few measurements the model is a scaled source sum and
with more it learns where this device departs from it. Residuals are relative (each row divided
by its measured latency): the fit minimises percentage error. `lambda` is chosen by K-fold
cross-validation (leave-one-out up to 10 measurements, 10 folds above); the chosen setting's
out-of-fold figures (within ±10%, MAPE, Spearman) are stored in the model. Tried and dropped (see
BENCHMARKS.md): a ridge over each source's coefficient, and picking one source by
cross-validation (both worse at 10-20 measurements); not tried: MLP/GBM ensembles and HELP's
meta-learned initialisation.

File (JSON, `schema` "hwnas-latency-model", `schema_version` 1): `space`, `resolution`,
`num_classes`, `metadata`, `intercept_ms`, `entries` (signature -> ms, the folded per-layer costs),
`fit` (coefficients, penalties, sources) and `cross_validation`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from predictors.cost import layer_macs
from predictors.latency.lut import (
    LatencyTable,
    LatencyTableError,
    MissingEntriesError,
    arch_signatures,
    mismatched_settings,
    save_json_atomically,
)
from search_spaces.build import LayerShape, layer_shapes
from search_spaces.errors import InputFileError, UserError
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec, SpecError

MODEL_SCHEMA = "hwnas-latency-model"
MODEL_SCHEMA_VERSION = 1
LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf)  # inf: no per-signature correction
PRIOR_SAMPLES = 256
_SAMPLE_COUNTS: dict[tuple, np.ndarray] = {}  # the prior's sample, per space (the same for every fit)


class MeasurementsError(UserError, ValueError):
    """A measurements or architectures file is malformed; the message names the file and line."""


# ---- reading measurements ------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    line: int
    text: str  # the `arch` cell as written
    arch: ArchSpec
    latency_ms: float | None


def parse_arch(space: SearchSpace, text: str, base: Path) -> ArchSpec:
    """An `arch` cell: the space's op-name string where it has one (fbnet: 22 ops joined by `-`),
    else the path of a spec JSON (relative to the CSV's folder), which must lie in the space."""
    if hasattr(space, "from_arch_string"):
        return space.from_arch_string(text)
    path = base / text
    if not path.is_file():
        raise SpecError(f"arch {text!r} is not a spec file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{text}: not valid JSON ({error})") from None
    arch = ArchSpec.from_dict(data.get("arch", data) if isinstance(data, dict) else data)
    space.encode(arch)  # names the block that does not fit the space
    return arch


def read_archs(path: str | Path, space: SearchSpace, *, latencies: bool) -> list[Measured]:
    """Rows of `arch[,latency_ms]`; every problem names the file and line. With `latencies`, the
    column is required, each value a positive number of ms, and no network may repeat."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path} does not exist (expected a CSV with columns arch"
                             f"{',latency_ms' if latencies else ''})")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        wanted = ["arch", "latency_ms"] if latencies else ["arch"]
        columns = [name.strip() for name in reader.fieldnames or []]
        if any(name not in columns for name in wanted):
            raise MeasurementsError(f"{path}: columns {columns}; expected {','.join(wanted)}")
        rows, seen = [], {}
        for row in reader:
            line = reader.line_num
            row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
            text = row["arch"]
            try:
                arch = parse_arch(space, text, path.parent)
            except SpecError as error:
                raise MeasurementsError(f"{path} line {line}: {error}") from None
            value = _latency(row.get("latency_ms"), path, line) if latencies else None
            if latencies:
                if arch in seen:
                    first_line, first_text = seen[arch]
                    same = "repeats" if first_text == text else f"is the same network as {first_text!r} on"
                    raise MeasurementsError(f"{path} line {line}: arch {text!r} {same} line {first_line}; "
                                            "give each network once (average repeated measurements)")
                seen[arch] = (line, text)
            rows.append(Measured(line, text, arch, value))
    if not rows:
        raise MeasurementsError(f"{path}: no rows after the header")
    return rows


def _latency(raw: str | None, path: Path, line: int) -> float:
    try:
        value = float(raw or "")
    except ValueError:
        raise MeasurementsError(f"{path} line {line}: latency_ms={raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise MeasurementsError(f"{path} line {line}: latency_ms={raw!r} must be a positive number of ms")
    return value


# ---- the model -----------------------------------------------------------------------------------
class FittedLatencyModel:
    """Intercept + per-signature entries, fitted; see the module docstring."""

    def __init__(self, metadata: dict[str, Any], entries: dict[str, float], intercept_ms: float, *, space: str,
                 resolution: int, num_classes: int, fit: dict[str, Any], cross_validation: dict[str, Any]) -> None:
        self.metadata = dict(metadata)
        self.metadata.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.entries = dict(entries)
        self._intercept = float(intercept_ms)
        self.space, self.resolution, self.num_classes = space, resolution, num_classes
        self.fit, self.cross_validation = fit, cross_validation
        self.calibration = None  # what reports look for on a table
        self.validation = {"cross_validation": cross_validation}

    @property
    def intercept_ms(self) -> float:
        return self._intercept

    @property
    def label(self) -> str:
        cv = self.cross_validation
        return (f"latency model ({self.space}, {self.metadata.get('device', 'device')}, fitted on "
                f"{self.fit.get('measurements')} measurements; cross-validated within ±10% "
                f"{100 * cv.get('within_10pct', float('nan')):.0f}%, MAPE {100 * cv.get('mape', float('nan')):.1f}%)")

    def __len__(self) -> int:
        return len(self.entries)

    def predict(self, arch: ArchSpec, *, calibrated: bool = True) -> float:
        try:
            return self._intercept + sum(self.entries[key] for _, key in arch_signatures(arch))
        except KeyError:
            raise MissingEntriesError([k for _, k in arch_signatures(arch) if k not in self.entries], self.label) from None

    def layer_ms(self, layer: LayerShape, *, calibrated: bool = True) -> float:
        if layer.signature not in self.entries:
            raise MissingEntriesError([layer.signature], self.label)
        return self.entries[layer.signature]

    def layer_latencies(self, arch: ArchSpec) -> list[tuple[str, str, float]]:
        missing = [key for _, key in arch_signatures(arch) if key not in self.entries]
        if missing:
            raise MissingEntriesError(missing, self.label)
        return [(name, key, self.entries[key]) for name, key in arch_signatures(arch)]

    def quantile(self, space: SearchSpace, q: float, n: int, seed: int) -> float:
        rng = np.random.default_rng(seed)
        return float(np.quantile([self.predict(space.sample(rng)) for _ in range(n)], q))

    def check_fits(self, *, space: str | None, resolution: int, num_classes: int, backend: str | None = None,
                   threads: int | None = None, source: str = "model") -> None:
        if wrong := mismatched_settings(self, space, resolution, num_classes, backend, threads):
            raise LatencyTableError(f"{source} was fitted for other settings: {', '.join(wrong)}")

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": MODEL_SCHEMA, "schema_version": MODEL_SCHEMA_VERSION, "space": self.space,
                "resolution": self.resolution, "num_classes": self.num_classes, "metadata": self.metadata,
                "intercept_ms": self._intercept, "entries": dict(sorted(self.entries.items())), "fit": self.fit,
                "cross_validation": self.cross_validation}

    @classmethod
    def from_dict(cls, data: Any, source: str = "model") -> FittedLatencyModel:
        if not isinstance(data, dict) or data.get("schema") != MODEL_SCHEMA:
            raise LatencyTableError(f"{source}: not a latency model (schema {MODEL_SCHEMA!r} expected)")
        if data.get("schema_version") != MODEL_SCHEMA_VERSION:
            raise LatencyTableError(f"{source}: schema_version={data.get('schema_version')!r} not in "
                                    f"{{{MODEL_SCHEMA_VERSION}}}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in entries.values()):
            raise LatencyTableError(f"{source}: 'entries' must map layer signatures to finite numbers of ms")
        intercept = data.get("intercept_ms")
        if isinstance(intercept, bool) or not isinstance(intercept, (int, float)) or not math.isfinite(intercept):
            raise LatencyTableError(f"{source}: intercept_ms={intercept!r} must be a finite number")
        for key, kind in (("space", str), ("resolution", int), ("num_classes", int)):
            if not isinstance(data.get(key), kind):
                raise LatencyTableError(f"{source}: {key}={data.get(key)!r} must be a {kind.__name__}")
        return cls(data.get("metadata") or {}, entries, intercept, space=data["space"], resolution=data["resolution"],
                   num_classes=data["num_classes"], fit=data.get("fit") or {},
                   cross_validation=data.get("cross_validation") or {})

    def save(self, path: str | os.PathLike) -> None:
        save_json_atomically(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedLatencyModel:
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"latency model {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LatencyTableError(f"{path}: corrupt latency model (not valid JSON: {error})") from None
        return cls.from_dict(data, source=str(path))


# ---- fitting -------------------------------------------------------------------------------------
class _Design:
    """Per-signature columns of a space and the prior's entries over them: the equal-weight mix of
    the sources, each divided by its mean prediction over `PRIOR_SAMPLES` architectures sampled
    from the space (seed 0), or MACs where no source is given."""

    def __init__(self, space: SearchSpace, sources: list[tuple[str, LatencyTable]]) -> None:
        layers = space.candidate_ops()
        self.keys = [layer.signature for layer in layers]
        self.column = {key: j for j, key in enumerate(self.keys)}
        self.source_names = [name for name, _ in sources]
        self.source_scales: dict[str, float] = {}
        if not sources:
            self.prior_entries = np.array([layer_macs(layer) for layer in layers]) / 1e6
            self.prior_intercept = 0.0
            return
        samples = self._sample_counts(space)
        mixed, intercept = np.zeros(len(layers)), 0.0
        for name, table in sources:
            missing = [layer.signature for layer in layers if layer.signature not in table.entries]
            if missing:
                raise LatencyTableError(f"source {name} lacks {len(missing)} layer(s) of space {space.name!r}, "
                                        f"e.g. {missing[0]}")
            entries = np.array([table.layer_ms(layer) for layer in layers])
            mean = float(np.mean(samples @ entries)) + table.intercept_ms
            if not mean > 0:
                raise LatencyTableError(f"source {name} predicts {mean:g} ms on average; not a usable prior")
            self.source_scales[name] = mean
            mixed += entries / (mean * len(sources))
            intercept += table.intercept_ms / (mean * len(sources))
        self.prior_entries, self.prior_intercept = mixed, intercept

    def _sample_counts(self, space: SearchSpace) -> np.ndarray:
        key = (space.name, space.resolution, space.num_classes, json.dumps(space.options, sort_keys=True))
        if key not in _SAMPLE_COUNTS:
            rng = np.random.default_rng(0)
            _SAMPLE_COUNTS[key] = self.counts([space.sample(rng) for _ in range(PRIOR_SAMPLES)])
        return _SAMPLE_COUNTS[key]

    def counts(self, archs: list[ArchSpec]) -> np.ndarray:
        out = np.zeros((len(archs), len(self.keys)))
        for i, arch in enumerate(archs):
            for layer in layer_shapes(arch):
                if layer.signature not in self.column:
                    raise SpecError(f"layer {layer.signature} is not a candidate op of the space")
                out[i, self.column[layer.signature]] += 1
        return out


def _solve(counts: np.ndarray, prior: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float, np.ndarray]:
    """Relative-error fit of latency = b + g * prior + counts @ delta, with lam/median(y)^2 |delta|^2
    (lam = inf: no delta, an affine map of the prior)."""
    n = len(y)
    use_delta = math.isfinite(lam)
    x = np.column_stack([np.ones(n), prior] + ([counts] if use_delta else [])) / y[:, None]
    target = np.ones(n)
    if use_delta:
        x = np.vstack([x, np.hstack([np.zeros((counts.shape[1], 2)),
                                     np.eye(counts.shape[1]) * math.sqrt(lam) / float(np.median(y))])])
        target = np.concatenate([target, np.zeros(counts.shape[1])])
    theta, *_ = np.linalg.lstsq(x, target, rcond=None)
    return float(theta[0]), float(theta[1]), theta[2:] if use_delta else np.zeros(counts.shape[1])


def _folds(n: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [fold for fold in np.array_split(order, min(n, 10)) if len(fold)]


def figures(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """within ±10%, MAPE and Spearman rank correlation of predictions against measurements."""
    ratio = np.abs(predicted - measured) / measured
    out = {"within_10pct": float(np.mean(ratio <= 0.10)), "mape": float(np.mean(ratio)), "n": int(len(measured))}
    if len(measured) > 2 and np.std(predicted) > 0 and np.std(measured) > 0:
        out["spearman"] = float(np.corrcoef(_ranks(predicted), _ranks(measured))[0, 1])
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (integer-ms measurements tie often), as Spearman's rho defines them."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, ranks) / counts)[inverse]


def _one_blas_thread() -> Any:
    """The fits solve many small systems: a multi-threaded BLAS only contends (seconds per solve on
    a loaded 2-core machine instead of milliseconds), so use one thread where threadpoolctl exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1)


def fit_latency_model(space: SearchSpace, archs: list[ArchSpec], latencies: np.ndarray | list[float],
                      sources: list[tuple[str, LatencyTable]] | None = None, *, metadata: dict[str, Any] | None = None,
                      seed: int = 0) -> FittedLatencyModel:
    """Fit on measured `archs` of `space` (at least 3), with optional named source tables."""
    with _one_blas_thread():
        return _fit(space, archs, latencies, sources, metadata, seed)


def _fit(space: SearchSpace, archs: list[ArchSpec], latencies: np.ndarray | list[float],
         sources: list[tuple[str, LatencyTable]] | None, metadata: dict[str, Any] | None, seed: int) -> FittedLatencyModel:
    y = np.asarray(latencies, dtype=float)
    if len(archs) != len(y) or len(y) < 3:
        raise MeasurementsError(f"need at least 3 measured architectures, got {len(y)}")
    design = _Design(space, list(sources or []))
    counts = design.counts(archs)
    prior = counts @ design.prior_entries + design.prior_intercept
    folds = _folds(len(y), seed)
    best = None
    for lam in LAMBDAS:
        predicted = np.empty_like(y)
        for fold in folds:
            train = np.setdiff1d(np.arange(len(y)), fold)
            b, g, delta = _solve(counts[train], prior[train], y[train], lam)
            predicted[fold] = b + g * prior[fold] + counts[fold] @ delta
        cv = figures(predicted, y)
        if best is None or cv["mape"] < best[0]["mape"] - 1e-12:
            best = (cv, lam)
    cv, lam = best
    b, g, delta = _solve(counts, prior, y, lam)
    entries = g * design.prior_entries + delta
    fit = {"kind": "affine map of the sources' equal-weight mix + per-signature ridge correction, relative error",
           "measurements": len(y), "lambda": None if math.isinf(lam) else lam,
           "prior": "sources" if design.source_names else "MACs (no source given)",
           "sources": design.source_names, "source_mean_ms": design.source_scales,
           "scale": g, "intercept_ms": b, "delta_abs_mean_ms": float(np.mean(np.abs(delta))),
           "training": figures(b + g * prior + counts @ delta, y)}
    cv = {**cv, "folds": len(folds), "method": "leave-one-out" if len(folds) == len(y) else f"{len(folds)}-fold"}
    meta = {"backend": "fitted", "source": "fitted:latency-model", **(metadata or {})}
    return FittedLatencyModel(meta, dict(zip(design.keys, map(float, entries))), b + g * design.prior_intercept,
                        space=space.name, resolution=space.resolution, num_classes=space.num_classes, fit=fit,
                        cross_validation=cv)
