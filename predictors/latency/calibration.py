"""`Calibration`: the affine map from a table's summed entries to a measured whole network (fitted
in `validate.py`), and the checked reading of a stored one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from predictors.latency.table_errors import LatencyTableError


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


def read_calibration(data: Any, source: str) -> Calibration | None:
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
