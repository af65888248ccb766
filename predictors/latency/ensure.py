"""A search's latency table on demand: measure what the table lacks, then calibrate it once against
whole networks, so every later search on this machine reuses one calibrated table.

Why calibrate: a sum of per-op timings counts each op's call overhead, which a whole network pays
once per inference instead (raw sums over-predict small networks by ~40% on onnxruntime here);
`validate.py` fits the correction on networks measured end to end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

from predictors.latency.builder import Measurer, build_table
from predictors.latency.lut import LatencyTable
from predictors.latency.validate import validate_table
from search_spaces.space import SearchSpace

logger = logging.getLogger(__name__)


def lut_path_for(space: str, resolution: int, num_classes: int, backend: str, threads: int,
                 space_options: dict[str, Any], root: Path = Path("runs/luts")) -> Path:
    """Where this machine's table for a space lives, so every search on it reuses one table."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
    options = ""
    if space_options:  # a restricted space has fewer ops: its own table
        digest = hashlib.sha256(json.dumps(space_options, sort_keys=True).encode()).hexdigest()[:8]
        options = f"_o{digest}"
    return root / f"{space}_r{resolution}_c{num_classes}{options}_{backend}_t{threads}_{host}.json"


def ensure_table(space: SearchSpace, measurer: Measurer, path: str | os.PathLike, *,
                 calibration_samples: int = 20, show_progress: bool = True) -> LatencyTable:
    """The table of `space` at `path`, ready to predict whole networks: the entries it lacks are
    measured (existing ones reused), and a table never validated is calibrated on
    `calibration_samples` networks measured end to end (0: left raw; the fit's scatter plot goes
    beside the table). A calibration that does not beat the raw sums out of fold is dropped (a fit
    on few noisy points can be worse than none); the table's validation figures still record the
    attempt, so later calls do not repeat it."""
    path = Path(path)
    table = build_table(space, measurer, path, show_progress=show_progress)
    if not calibration_samples or table.calibration is not None or table.validation is not None:
        return table
    logger.info("calibrating %s on %d networks measured end to end", path, calibration_samples)
    report = validate_table(table, space, measurer, samples=calibration_samples, seed=0,
                            plot_path=path.with_suffix(".validation.png"))
    if report.calibrated.mape >= report.raw.mape:
        logger.warning("calibration (%s) does not beat the raw sums out of fold; not used", report.calibration)
        table.calibration = None
    table.save(path)
    return table
