"""Hand-designed baselines for `bench.search_quality`: zoo networks adapted to small inputs
(`search_spaces.small_input`) and width-scaled to a latency budget by end-to-end measurement.

Width: the latency table cannot price zoo ops (other widths, other blocks), so each candidate
width is built and timed end to end with the table's backend and thread count, and bisected to
the largest width multiplier (compress.scale.scale_spec, EfficientNet rounding) whose measured
latency is within the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.report import fmt, md_table, pct
from compress.scale import scale_spec
from search_spaces import final_map_size, small_input, zoo
from search_spaces.spec import ArchSpec

logger = logging.getLogger("bench.baselines")

# zoo name -> label in the report
ZOO_BASELINES: dict[str, str] = {
    "mobilenet_v2": "MobileNetV2",
    "shufflenet_v2_x1_0": "ShuffleNetV2 1.0",
    "ghostnet_1_0": "GhostNet 1.0",
    "mnasnet_b1": "MnasNet-B1",
    "mnasnet_a1": "MnasNet-A1",
}


def small_input_notes(before: ArchSpec, after: ArchSpec) -> list[str]:
    """What `small_input` changed, as the report lists it."""
    notes = []
    if (before.stem.stride, before.stem.pool) != (after.stem.stride, after.stem.pool):
        notes.append(f"stem s{before.stem.stride}{' +pool' if before.stem.pool else ''} -> s{after.stem.stride}")
    notes += [f"blocks[{i}] ({new.op.value}) s{old.stride} -> s{new.stride}"
              for i, (old, new) in enumerate(zip(before.blocks, after.blocks)) if old.stride != new.stride]
    size = final_map_size(after)
    return notes + [f"final map {size}x{size}"]


@dataclass
class WidthFit:
    name: str
    width: float
    spec: ArchSpec
    measured_ms: float
    fits: bool  # False: even the narrowest width is over budget (the narrowest is kept)
    notes: list[str]
    tried: list[tuple[float, float]] = field(default_factory=list)  # (width, measured ms)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "measured_ms": self.measured_ms, "fits": self.fits,
                "notes": self.notes, "tried": self.tried, "arch": self.spec.to_dict()}


def fit_width(name: str, resolution: int, num_classes: int, budget_ms: float, measure: Callable[[ArchSpec], float],
              *, low: float = 0.1, high: float = 2.0, steps: int = 7) -> WidthFit:
    """Bisect the width multiplier in [low, high] to the largest one measured within `budget_ms`.

    Rounding to multiples of 8 makes latency only roughly monotone in width; bisection keeps the
    invariant "low fits, high does not", so the answer is a measured-feasible width whose
    neighbour (within (high - low) / 2^steps) measured over budget. Widths that round to the
    same network are measured once."""
    imagenet = zoo.get(name, resolution, num_classes)
    base = small_input(imagenet)
    notes = small_input_notes(imagenet, base)
    cache: dict[str, float] = {}
    tried: list[tuple[float, float]] = []

    def timed(width: float) -> tuple[ArchSpec, float]:
        spec = scale_spec(base, width=width)
        key = spec.content_hash()
        if key not in cache:
            cache[key] = measure(spec)
            logger.info("%s width %.3f: %.3f ms (budget %.3f)", name, width, cache[key], budget_ms)
        tried.append((round(width, 4), round(cache[key], 4)))
        return spec, cache[key]

    spec_low, ms_low = timed(low)
    if ms_low > budget_ms:
        logger.warning("%s: even width %.2f measures %.3f ms > budget %.3f ms", name, low, ms_low, budget_ms)
        return WidthFit(name, low, spec_low, ms_low, False, notes, tried)
    spec_high, ms_high = timed(high)
    if ms_high <= budget_ms:
        return WidthFit(name, high, spec_high, ms_high, True, notes, tried)
    for _ in range(steps):
        middle = (low + high) / 2
        spec, ms = timed(middle)
        if ms <= budget_ms:
            low, spec_low, ms_low = middle, spec, ms
        else:
            high = middle
    return WidthFit(name, round(low, 4), spec_low, ms_low, True, notes, tried)


def fit_zoo(names: list[str], resolution: int, num_classes: int, budget_ms: float, measurer: Any,
            width_range: tuple[float, float], steps: int) -> dict[str, dict[str, Any]]:
    """`fit_width` for each model, timing with `measurer` (a `predictors.latency.Measurer`)."""
    def measure(spec: ArchSpec) -> float:
        return measurer.measure_archs([spec])[0].median_ms

    low, high = width_range
    return {name: fit_width(name, resolution, num_classes, budget_ms, measure, low=low, high=high,
                            steps=steps).to_dict() for name in names}


def measure_finals(models: dict[str, dict[str, Any]], measurer: Any) -> dict[str, dict[str, float]]:
    """Every final model timed in one interleaved call, so drift on the machine hits all alike."""
    names = list(models)
    found = measurer.measure_archs([ArchSpec.from_dict(models[n]) for n in names]) if names else []
    return {n: {"median_ms": m.median_ms, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms} for n, m in zip(names, found)}


def zoo_section(settings: dict[str, Any], rows: dict[str, dict[str, Any]], fits: dict[str, dict[str, Any]],
                measured: dict[str, dict[str, float]], latency: Callable[[float | None], str]) -> list[str]:
    """The zoo table of the report: `rows` are the retraining results, `fits` the width fits,
    `measured` the final interleaved measurement (key `zoo-<name>`)."""
    low, high = settings["width_range"]
    lines = ["", (f"Zoo baselines: small-input strides (rule in `search_spaces/small_input.py`), width multiplier bisected in "
             f"[{low}, {high}] ({settings['bisect_steps']} steps) to the largest one measured within the budget "
             "(`compress.scale.scale_spec`: stem, blocks and head scale).")]
    table = []
    for row in rows.values():
        fit, final = fits[row["model"]], row.get("final", {})
        table.append([ZOO_BASELINES[row["model"]], "; ".join(fit["notes"]),
                      f"{fit['width']:.3f}" + ("" if fit["fits"] else " (narrowest, over budget)"),
                      fmt(final.get("params") and final["params"] / 1e6, ".2f", " M"),
                      fmt(final.get("macs") and final["macs"] / 1e6, ".1f", " M"), latency(fit["measured_ms"]),
                      latency(measured.get(f"zoo-{row['model']}", {}).get("median_ms")), str(row["seed"]),
                      pct(final.get("test_accuracy")) + (f" ({row['error']})" if "error" in row else ""),
                      pct(final.get("final_val_accuracy")), fmt(final.get("final_wall_s"), ".0f", " s")])
    return lines + md_table(["model", "small-input changes", "width", "params", "MACs", "measured (fit)",
                             "measured (final)", "seed", "final test acc", "final val acc", "final train"], table)
