"""How well a `LatencyTable` predicts whole networks: sample architectures, measure them end to end
on the same backend, compare.

Figures (for raw sums and for the calibrated prediction): RMSE (ms), mean absolute percentage
error, share of architectures within ±10% of measured, Kendall's tau (rank agreement, what a
search cares about most).

Calibration. A per-op sum misses what happens between ops (framework dispatch per block,
memory traffic at block borders) and counts the per-call overhead of the measuring runtime once
per op instead of once per network. Both are close to linear in the sum, so we fit
`measured = slope * sum + intercept` by least squares. The calibrated figures we report are
*out-of-fold*: each architecture is predicted by a fit on the other folds (5-fold), so they are
not flattered by fitting and scoring on the same points; the calibration stored in the table is
then fitted on all samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from predictors.latency.builder import Measurer
from predictors.latency.lut import Calibration, LatencyTable
from search_spaces.space import SearchSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FidelityFigures:
    rmse_ms: float
    mape: float  # mean absolute percentage error, as a fraction (0.05 = 5%)
    within_10pct: float  # share of architectures with |predicted - measured| <= 10% of measured
    kendall_tau: float

    @classmethod
    def compute(cls, predicted: np.ndarray, measured: np.ndarray) -> FidelityFigures:
        error = predicted - measured
        relative = np.abs(error) / measured
        tau = kendalltau(predicted, measured).statistic if len(measured) > 1 else math.nan
        return cls(
            rmse_ms=float(np.sqrt(np.mean(error**2))),
            mape=float(np.mean(relative)),
            within_10pct=float(np.mean(relative <= 0.10)),
            kendall_tau=float(tau),
        )


@dataclass(frozen=True)
class ValidationReport:
    samples: int
    seed: int
    raw: FidelityFigures
    calibrated: FidelityFigures
    calibration: Calibration
    predicted_ms: list[float]
    measured_ms: list[float]
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "seed": self.seed,
            "raw": asdict(self.raw),
            "calibrated_out_of_fold": asdict(self.calibrated),
            "calibration": self.calibration.to_dict(),
            "predicted_raw_ms": self.predicted_ms,
            "measured_ms": self.measured_ms,
            "plot": self.plot,
        }


def fit_calibration(raw: np.ndarray, measured: np.ndarray) -> Calibration:
    design = np.stack([raw, np.ones_like(raw)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, measured, rcond=None)
    return Calibration(float(slope), float(intercept), len(raw))


def out_of_fold_predictions(raw: np.ndarray, measured: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(raw))
    predicted = np.empty_like(raw)
    for fold in np.array_split(order, min(folds, len(raw))):
        rest = np.setdiff1d(order, fold)
        predicted[fold] = fit_calibration(raw[rest], measured[rest]).apply(raw[fold])
    return predicted


def validate_table(
    table: LatencyTable,
    space: SearchSpace,
    measurer: Measurer,
    *,
    samples: int = 50,
    seed: int = 0,
    plot_path: str | Path | None = None,
    chunk_size: int = 10,
    progress: Any = None,
) -> ValidationReport:
    """Measure `samples` distinct sampled architectures end to end and compare with the table.
    Stores the calibration and the figures in `table` (the caller saves it)."""
    if samples < 3:
        raise ValueError(f"samples={samples} must be >= 3 (a calibration has two parameters)")
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    for _ in range(samples * 20):
        arch = space.sample(rng)
        if arch.content_hash() not in seen:
            seen.add(arch.content_hash())
            archs.append(arch)
        if len(archs) == samples:
            break
    raw = np.array([table.predict(arch, calibrated=False) for arch in archs])
    measured_list: list[float] = []
    for start in range(0, len(archs), chunk_size):
        chunk = archs[start : start + chunk_size]
        measured_list += [m.median_ms for m in measurer.measure_archs(chunk)]
        if progress is not None:
            progress(len(measured_list))
    measured = np.array(measured_list)
    calibrated = out_of_fold_predictions(raw, measured, seed=seed)
    report = ValidationReport(
        samples=len(archs),
        seed=seed,
        raw=FidelityFigures.compute(raw, measured),
        calibrated=FidelityFigures.compute(calibrated, measured),
        calibration=fit_calibration(raw, measured),
        predicted_ms=raw.round(5).tolist(),
        measured_ms=measured.round(5).tolist(),
        plot=str(plot_path) if plot_path else None,
    )
    if plot_path:
        plot_fidelity(report, table, plot_path)
    table.calibration = report.calibration
    table.validation = {k: v for k, v in report.to_dict().items() if k not in ("predicted_raw_ms", "measured_ms")}
    logger.info("validated %s: raw MAPE %.1f%%, calibrated MAPE %.1f%%, tau %.3f", table.label,
                100 * report.raw.mape, 100 * report.calibrated.mape, report.raw.kendall_tau)
    return report


def plot_fidelity(report: ValidationReport, table: LatencyTable, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = np.array(report.predicted_ms)
    measured = np.array(report.measured_ms)
    calibrated = np.array([report.calibration.apply(v) for v in raw])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(measured, raw, s=18, label=f"sum of entries (MAPE {100 * report.raw.mape:.1f}%)", alpha=0.8)
    ax.scatter(measured, calibrated, s=18, marker="x",
               label=f"calibrated (out-of-fold MAPE {100 * report.calibrated.mape:.1f}%)", alpha=0.8)
    low, high = float(min(measured.min(), raw.min())), float(max(measured.max(), raw.max()))
    line = np.linspace(low, high, 2)
    ax.plot(line, line, "k-", lw=1, label="predicted = measured")
    ax.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.15, label="±10%")
    ax.set_xlabel("measured end-to-end latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    meta = table.metadata
    ax.set_title(f"{table.space}: {meta.get('backend')} x{meta.get('threads')} on {meta.get('device')}\n"
                 f"{report.samples} archs, Kendall tau {report.raw.kendall_tau:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
