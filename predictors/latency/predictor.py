"""`LatencyPredictor`: what a search, a report and a model card need from whatever predicts latency,
and `load_latency_predictor`, which opens either kind of file by its `schema`.

Two kinds implement it: `LatencyTable` (`lut.py`: per-layer entries measured or imported, summed,
optionally calibrated) and `FittedLatencyModel` (`fit.py`: fitted on whole-model measurements of a
device, from few of them, with source tables as priors). Both predict a network as an intercept
plus a sum of per-layer costs, so `layer_ms` (ProxylessNAS's expected latency) and
`layer_latencies` (reports) are defined for both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from search_spaces.build import LayerShape
from search_spaces.errors import InputFileError
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec


@runtime_checkable
class LatencyPredictor(Protocol):
    """The smallest interface the search (`nas/search/runner.py`, `trial.py`), the one-shot
    supernet, reports and model cards use."""

    metadata: dict[str, Any]  # where the figures come from: device, backend, threads, source, ...
    space: str | None
    resolution: int | None
    num_classes: int | None

    @property
    def label(self) -> str: ...  # one line naming the predictor (model cards, error messages)

    @property
    def intercept_ms(self) -> float: ...  # the per-network constant of `predict`

    def predict(self, arch: ArchSpec) -> float: ...  # ms; MissingEntriesError for layers it cannot price

    def layer_ms(self, layer: LayerShape) -> float: ...  # predict = intercept_ms + sum of layer_ms

    def layer_latencies(self, arch: ArchSpec) -> list[tuple[str, str, float]]: ...  # (layer, key, ms)

    def quantile(self, space: SearchSpace, q: float, n: int, seed: int) -> float: ...

    def check_fits(self, *, space: str | None, resolution: int, num_classes: int, backend: str | None = None,
                   threads: int | None = None, source: str = "table") -> None: ...

    def save(self, path: str | os.PathLike) -> None: ...


def load_latency_predictor(path: str | os.PathLike) -> LatencyPredictor:
    """A latency table or a fitted latency model, by the file's `schema`."""
    from predictors.latency.fit import MODEL_SCHEMA, FittedLatencyModel
    from predictors.latency.lut import LatencyTable

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"latency table (or fitted model) {path} " + (
            "is a directory, not a file" if path.is_dir() else "does not exist"))
    try:
        schema = json.loads(path.read_text()).get("schema")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        schema = None  # LatencyTable.load names the problem
    if schema == MODEL_SCHEMA:
        return FittedLatencyModel.load(path)
    return LatencyTable.load(path)
