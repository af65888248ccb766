"""What `export_run` reports: one `FormatResult` per written format, gathered in an `ExportReport`.

Its own module so that the model card can read a report without importing the exporter that
writes the card (`export.py` imports `model_card.py`, never the reverse).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from predictors.latency.backends import ONNX_OPSET
from search_spaces.spec import ArchSpec


@dataclass
class FormatResult:
    format: str
    path: Path
    size_bytes: int
    criterion: str  # how it was verified, in words (goes into the model card)
    max_abs_diff: float  # observed, on the verification inputs
    tolerance: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass
class ExportReport:
    run_dir: Path
    out_dir: Path
    source: str  # where the weights came from, e.g. "best/ (trial 3)"
    trial_id: int | None
    arch: ArchSpec
    formats: list[FormatResult]
    opset: int = ONNX_OPSET
    calibration: str = "random"
    measured_latency: dict[str, Any] | None = None
    card_path: Path | None = None

    def result(self, name: str) -> FormatResult | None:
        return next((item for item in self.formats if item.format == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "out_dir": str(self.out_dir), "source": self.source,
            "trial_id": self.trial_id, "arch_hash": self.arch.content_hash(), "opset": self.opset,
            "calibration": self.calibration, "formats": [item.to_dict() for item in self.formats],
            "measured_latency": self.measured_latency, "card_path": str(self.card_path) if self.card_path else None,
        }
