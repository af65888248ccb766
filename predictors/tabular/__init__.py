"""Tabular benchmarks: every architecture of a space trained (and timed) once, so a trial is a
lookup. `nb201` reads NAS-Bench-201's table (accuracies, cost, HW-NAS-Bench and HELP latencies)."""

from predictors.tabular.base import TabularAnswer, TabularDataset
from predictors.tabular.nb201 import (
    DATASETS,
    FIDELITIES,
    NB201Dataset,
    NB201Table,
    default_table_path,
    open_nb201,
)

__all__ = ["DATASETS", "FIDELITIES", "NB201Dataset", "NB201Table", "TabularAnswer", "TabularDataset",
           "default_table_path", "open_nb201"]
