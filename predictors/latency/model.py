"""`LatencyModel`: what a search needs from a latency predictor, and `open_latency_model`, which
turns `--lut TEXT` into one.

A search uses its latency model in exactly these places: the budget verdict of every trial
(`predict`, in `nas.search.trial.precheck` and the strategies' `is_feasible` pre-check,
`nas.search.runner.make_searcher`), the check that it describes the searched space
(`check_fits`, when the run opens it), the budget rules of the benchmarks (`quantile`), and the
model card and final step (`label`, `metadata`: where the figures come from; `backend` and
`threads` when they were measured here and can be re-measured). `predict` raises
`MissingEntriesError` for an architecture it cannot vouch for: the trial fails with that reason
and the pre-check treats the architecture as infeasible.

Implementations: `LatencyTable` (per-layer table measured or imported, a JSON file) and
`TabularLatencyModel` (whole-network latencies of a tabular benchmark: `hwnasbench:<device>`,
`help:<device>`). A fitted predictor (issue #17) plugs in by implementing the same five members.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol, runtime_checkable

import numpy as np

from predictors.latency.lut import LatencyTableError, MissingEntriesError
from predictors.latency.predictor import load_latency_predictor
from predictors.tabular.nb201 import LATENCY_SOURCES, NB201Table, dataset_of, edges_of, open_nb201
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

__all__ = ["LatencyModel", "TabularLatencyModel", "open_latency_model"]


@runtime_checkable
class LatencyModel(Protocol):
    metadata: dict[str, Any]

    @property
    def label(self) -> str: ...

    def predict(self, arch: ArchSpec) -> float:
        """End-to-end latency in ms; `MissingEntriesError` when the model cannot vouch for `arch`."""

    def check_fits(self, *, space: str | None, resolution: int, num_classes: int, source: str = "table") -> None:
        """Raise a `LatencyTableError` (a UserError) when the model does not describe this space."""

    def quantile(self, space: SearchSpace, q: float, n: int, seed: int) -> float:
        """The q-quantile of the predicted latency of `n` architectures sampled from `space`."""


_NAMED = re.compile(rf"^({'|'.join(LATENCY_SOURCES)}):([A-Za-z0-9_]+)$")


def is_named_model(text: str) -> bool:
    """Whether `--lut TEXT` names a tabular latency model rather than a table file."""
    return bool(_NAMED.match(str(text)))


def open_latency_model(text: str) -> LatencyModel:
    """`hwnasbench:<device>` / `help:<device>`: that device's column of the NB201 table
    (`TabularLatencyModel`); anything else: the path of a `LatencyTable` or of a fitted latency
    model (`load_latency_predictor`)."""
    match = _NAMED.match(str(text))
    if match:
        return TabularLatencyModel(match.group(1), match.group(2))
    return load_latency_predictor(text)


class TabularLatencyModel:
    """The measured whole-network latency of every NB201 cell on one device (`hwnasbench:pixel3`).

    HW-NAS-Bench has a column per data set; which one answers follows the architecture's input
    size and classes (`arch.resolution`, `arch.num_classes`). HELP has one column (its 32x32
    network), so HELP devices serve CIFAR-10 / CIFAR-100 searches only. Missing latencies (empty
    cells, the 341 disconnected cells) raise `MissingEntriesError`."""

    def __init__(self, source: str, device: str, table: NB201Table | None = None) -> None:
        self.table = table if table is not None else open_nb201()
        self.source, self.device = source, device
        self.table.latency_column(source, device, "cifar10")  # refuses an unknown device now
        self.metadata: dict[str, Any] = {"backend": f"{source}:{device}", "device": device, "source": source,
                                         "kind": "tabular", "table": str(self.table.path)}
        self._columns: dict[str, np.ndarray] = {}

    @property
    def label(self) -> str:
        return f"{'HW-NAS-Bench' if self.source == 'hwnasbench' else 'HELP'} {self.device} latency (NB201 table)"

    def column_for(self, dataset: str) -> np.ndarray:
        if dataset not in self._columns:
            if self.source == "help" and dataset == "imagenet16":
                raise LatencyTableError(f"help:{self.device}: HELP measured the 32x32 NB201 network; "
                                        "it has no latency for imagenet16 (16x16)")
            self._columns[dataset] = self.table.latencies(self.table.latency_column(self.source, self.device, dataset))
        return self._columns[dataset]

    def latency_of_index(self, index: int, dataset: str) -> float:
        value = float(self.column_for(dataset)[index])
        if math.isnan(value):
            why = "disconnected cell" if not self.table.connected[index] else "no value in the table"
            raise MissingEntriesError([f"{self.source}:{self.device}[nb201 index {index}: {why}]"], self.label)
        return value

    def predict(self, arch: ArchSpec) -> float:
        dataset = dataset_of(arch.resolution, arch.num_classes)
        return self.latency_of_index(self.table.index_of(edges_of(arch)), dataset)

    def check_fits(self, *, space: str | None, resolution: int, num_classes: int, backend: str | None = None,
                   threads: int | None = None, source: str = "table") -> None:
        if space != "nb201":
            raise LatencyTableError(f"{source}: a latency model of NB201 cells; the search space is {space!r} "
                                    "(use --space nb201, or a table measured for that space)")
        try:
            dataset = dataset_of(resolution, num_classes)
        except Exception as error:
            raise LatencyTableError(f"{source}: {error}") from None
        self.column_for(dataset)

    def quantile(self, space: SearchSpace, q: float, n: int, seed: int) -> float:
        """As `LatencyTable.quantile`, over the sampled architectures it has a latency for."""
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(n):
            try:
                values.append(self.predict(space.sample(rng)))
            except MissingEntriesError:
                continue
        return float(np.quantile(values, q))

    def exact_quantile(self, dataset: str, q: float) -> float:
        """The q-quantile over every cell with a latency (the connected cells): a budget rule that
        needs no sampling."""
        values = self.column_for(dataset)
        return float(np.quantile(values[~np.isnan(values)], q))
