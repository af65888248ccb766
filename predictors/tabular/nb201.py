"""NAS-Bench-201 as a table: the shared `nb201.csv` (its ORIGIN.md says where every column comes
from), loaded once per path and answered by arch string, op tuple or `ArchSpec`.

Per data set (`cifar10`, `cifar100`, `imagenet16` = ImageNet16-120 at 16x16, 120 classes):
- observed accuracy, by fidelity: `200ep` (default) = `<ds>_test_acc`, the 200-epoch test
  accuracy (seed mean; what NB201 papers report and what regret is measured on); `12ep` =
  `<ds>_valid_acc_12ep`, the 12-epoch validation accuracy (NB201's `hp='12'`), the cheap fidelity.
  The table records no training time, so its cost is stated in epochs only (12 vs 200);
  `train_time_s` is None either way.
- cost: `params_<ds>` (M) and `flops_<ds>` (MFLOPs incl. the classifier's bias adds), turned into
  this project's counts: params x 1e6, MACs = FLOPs x 1e6 - classes (equal to
  `predictors.cost` on every cell, `tests/test_nb201.py`).
- latency (ms): HW-NAS-Bench `hw_<ds>_<device>_latency` (edgegpu, raspi4, edgetpu, pixel3,
  eyeriss, fpga) and HELP `help_<device>_latency` (one column for every data set; HELP measured
  the 32x32 network). A latency is *missing* where the table has none (edgetpu: 4,699 cells) and
  for the 341 cells whose output is cut off from the input: their exported graphs were degenerate
  (e.g. Pixel 3 < 0.1 ms), so ORIGIN.md says to exclude them from latency studies. Their
  accuracy (10 %, chance on CIFAR-10) is answered as the table has it.

Where the table is: `$HWNAS_SHARED_DATA/nb201/nb201.csv`, default `../shared/data/nb201/nb201.csv`
beside the repository; nothing is copied into the repository.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from predictors.tabular.base import TabularAnswer, TabularDataset
from search_spaces.errors import DatasetError, InputFileError, OptionError
from search_spaces.spaces.nb201 import parse_arch_string, reaches_output
from search_spaces.spec import ArchSpec, Op

__all__ = ["DATASETS", "FIDELITIES", "HW_DEVICES", "NB201Dataset", "NB201Table", "default_table_path", "open_nb201"]

REPO = Path(__file__).resolve().parents[2]
# data set -> (resolution, classes): NB201's three training settings
DATASETS: dict[str, tuple[int, int]] = {"cifar10": (32, 10), "cifar100": (32, 100), "imagenet16": (16, 120)}
# fidelity -> (column pattern, epochs of the schedule)
FIDELITIES: dict[str, tuple[str, int]] = {"200ep": ("{ds}_test_acc", 200), "12ep": ("{ds}_valid_acc_12ep", 12)}
HW_DEVICES = ("edgegpu", "raspi4", "edgetpu", "pixel3", "eyeriss", "fpga")
LATENCY_SOURCES = ("hwnasbench", "help")


def default_table_path() -> Path:
    root = os.environ.get("HWNAS_SHARED_DATA")
    return (Path(root) if root else REPO.parent / "shared" / "data") / "nb201" / "nb201.csv"


def dataset_of(resolution: int, num_classes: int) -> str:
    """The NB201 data set whose network has this input size and class count."""
    for name, setting in DATASETS.items():
        if setting == (resolution, num_classes):
            return name
    known = ", ".join(f"{name} ({r}px, {c} classes)" for name, (r, c) in DATASETS.items())
    raise OptionError(f"NB201 has no data set for {resolution}px / {num_classes} classes; it has {known}")


def edges_of(arch: ArchSpec | str | Sequence[str]) -> tuple[str, ...]:
    """The 6 edge ops of an NB201 cell given as an arch string, an op tuple or an nb201 spec."""
    if isinstance(arch, str):
        return parse_arch_string(arch)
    if isinstance(arch, ArchSpec):
        for block in arch.blocks:
            if block.op is Op.CELL:
                return tuple(block.edges)
        raise OptionError(f"{arch.name or 'architecture'}: not an nb201 network (no cell block)")
    return tuple(arch)


class NB201Table:
    """The whole table in memory: one float array per numeric column, rows in NB201 index order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows = list(reader)
        if "arch" not in header or "index" not in header:
            raise DatasetError(f"{path}: not the NB201 table (no 'index'/'arch' columns)")
        position = {name: i for i, name in enumerate(header)}
        self.arch_strings = [row[position["arch"]] for row in rows]
        self.columns: dict[str, np.ndarray] = {}
        for name, i in position.items():
            if name == "arch":
                continue
            self.columns[name] = np.array([float(row[i]) if row[i] != "" else math.nan for row in rows])
        if not np.array_equal(self.columns["index"], np.arange(len(rows))):
            raise DatasetError(f"{path}: rows are not in NB201 index order 0..{len(rows) - 1}")
        self.edges = [parse_arch_string(text) for text in self.arch_strings]
        self.row = {edges: i for i, edges in enumerate(self.edges)}
        self.connected = np.array([reaches_output(edges) for edges in self.edges])
        self.help_devices = tuple(sorted(name[5:-8] for name in header
                                         if name.startswith("help_") and name.endswith("_latency")))

    def __len__(self) -> int:
        return len(self.arch_strings)

    def index_of(self, arch: ArchSpec | str | Sequence[str]) -> int:
        edges = edges_of(arch)
        try:
            return self.row[edges]
        except KeyError:
            raise OptionError(f"{self.path}: no NB201 cell {edges!r}") from None

    def column(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise DatasetError(f"{self.path}: no column {name!r}") from None

    def latency_column(self, source: str, device: str, dataset: str) -> str:
        """The column of `device`'s latency from `source` (hwnasbench | help) for `dataset`."""
        if source == "hwnasbench":
            if device not in HW_DEVICES:
                raise OptionError(f"hwnasbench:{device}: unknown device; HW-NAS-Bench has {', '.join(HW_DEVICES)}")
            return f"hw_{dataset}_{device}_latency"
        if source == "help":
            if device not in self.help_devices:
                raise OptionError(f"help:{device}: unknown device; HELP has {', '.join(self.help_devices)}")
            return f"help_{device}_latency"
        raise OptionError(f"latency source {source!r} unknown; expected one of {', '.join(LATENCY_SOURCES)}")

    def latencies(self, column: str) -> np.ndarray:
        """The column with NaN where the table cannot vouch for a latency (empty cells, and the
        disconnected cells' degenerate figures)."""
        values = self.column(column).copy()
        values[~self.connected] = math.nan
        return values


@lru_cache(maxsize=4)
def _open(path: str) -> NB201Table:
    return NB201Table(Path(path))


def open_nb201(path: str | os.PathLike | None = None) -> NB201Table:
    """The table at `path` (default: `default_table_path()`), read once per process."""
    where = Path(path) if path is not None else default_table_path()
    if where.is_dir():
        where = where / "nb201.csv"
    if not where.is_file():
        hint = "" if path is not None else " (set HWNAS_SHARED_DATA to the folder holding nb201/nb201.csv)"
        raise InputFileError(f"NB201 table {where} does not exist{hint}")
    return _open(str(where.resolve()))


class NB201Dataset(TabularDataset):
    """`--dataset nb201:<ds>[:<fidelity>]`: the accuracy oracle of one NB201 data set."""

    def __init__(self, dataset: str, fidelity: str = "200ep", table: NB201Table | None = None) -> None:
        if dataset not in DATASETS:
            raise DatasetError(f"nb201:{dataset}: unknown data set; expected one of {', '.join(DATASETS)}")
        if fidelity not in FIDELITIES:
            raise DatasetError(f"nb201:{dataset}:{fidelity}: unknown fidelity; expected one of "
                               f"{', '.join(FIDELITIES)} (default 200ep)")
        self.table = table if table is not None else open_nb201()
        self.dataset, self.fidelity = dataset, fidelity
        self.resolution, self.num_classes = DATASETS[dataset]
        pattern, self.epochs = FIDELITIES[fidelity]
        self.accuracy_column = pattern.format(ds=dataset)
        self.name = f"nb201:{dataset}" + ("" if fidelity == "200ep" else f":{fidelity}")
        self._accuracy = self.table.column(self.accuracy_column)
        self._test = self.table.column(f"{dataset}_test_acc")
        self._params = self.table.column(f"params_{dataset}")
        self._flops = self.table.column(f"flops_{dataset}")

    def answer(self, arch: ArchSpec | str | Sequence[str], epochs: int | None = None) -> TabularAnswer:
        i = self.table.index_of(arch)
        params, macs = self._cost(i)
        column, schedule, values = self.accuracy_column, self.epochs, self._accuracy
        if epochs is not None and epochs != self.epochs:
            within = [item for item in FIDELITIES.values() if item[1] <= epochs] or [min(FIDELITIES.values(),
                                                                                         key=lambda f: f[1])]
            pattern, schedule = max(within, key=lambda f: f[1])
            column = pattern.format(ds=self.dataset)
            values = self.table.column(column)
        return TabularAnswer(float(values[i]) / 100, schedule, None, params, macs, i, column)

    def cost(self, arch: ArchSpec | str | Sequence[str]) -> tuple[int, int]:
        return self._cost(self.table.index_of(arch))

    def _cost(self, i: int) -> tuple[int, int]:
        return round(self._params[i] * 1e6), round(self._flops[i] * 1e6) - self.num_classes

    def test_accuracy(self, arch: ArchSpec | str | Sequence[str]) -> float:
        """The 200-epoch test accuracy in [0, 1], whatever the observed fidelity (for judging)."""
        return float(self._test[self.table.index_of(arch)]) / 100


def parse_nb201_dataset(argument: str) -> NB201Dataset:
    """`cifar10`, `cifar100:12ep`, ...: the part after `nb201:`."""
    dataset, _, fidelity = argument.partition(":")
    return NB201Dataset(dataset, fidelity or "200ep")
