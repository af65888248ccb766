"""Building a `LatencyTable` for a search space: measure every candidate op, resumably.

A `Measurer` turns layers (or whole architectures) into `Measurement`s. `LocalMeasurer` builds
the modules here and times them with a backend of `measure.py`; `remote.RemoteMeasurer` sends
the same layers as JSON to a device agent. `build_table` does not care which.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from predictors.latency.lut import LatencyTable
from predictors.latency.measure import (
    UNSTABLE_ITEMS,
    LatencyBackend,
    Measurement,
    get_backend,
    measure_modules,
)
from search_spaces.build import LayerShape, build_layer, build_model
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

Progress_ = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class MeasureSettings:
    """The knobs of the protocol in `measure.py`; recorded in each table's metadata."""

    warmup: int = 10
    blocks: int = 15
    block_runs: int = 10
    max_spread: float = 0.2
    retries: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> MeasureSettings:
        """`"10,15,10"`: warmup, blocks and block_runs; the other knobs at their defaults."""
        warmup, blocks, block_runs = (int(value) for value in text.split(","))
        return cls(warmup, blocks, block_runs)


class Measurer(Protocol):
    def metadata(self) -> dict[str, Any]: ...

    def measure_layers(self, layers: Sequence[LayerShape], progress: Progress_ | None = None) -> list[Measurement]: ...

    def measure_archs(self, archs: Sequence[ArchSpec], progress: Progress_ | None = None) -> list[Measurement]: ...


class LocalMeasurer:
    """Measures on this machine with one of the registered backends."""

    def __init__(self, backend: LatencyBackend | str = "onnxruntime", threads: int = 1,
                 settings: MeasureSettings | None = None) -> None:
        self.backend = get_backend(backend, threads=threads) if isinstance(backend, str) else backend
        self.settings = settings or MeasureSettings()

    def metadata(self) -> dict[str, Any]:
        return {**self.backend.metadata(), "protocol": self.settings.to_dict()}

    def _measure(self, items: list, progress: Progress_ | None) -> list[Measurement]:
        return measure_modules(self.backend, items, progress=progress, **self.settings.to_dict())

    def measure_layers(self, layers: Sequence[LayerShape], progress: Progress_ | None = None) -> list[Measurement]:
        return self._measure([(build_layer(layer), layer.input_shape) for layer in layers], progress)

    def measure_archs(self, archs: Sequence[ArchSpec], progress: Progress_ | None = None) -> list[Measurement]:
        items = [(build_model(arch), (1, arch.in_channels, arch.resolution, arch.resolution)) for arch in archs]
        return self._measure(items, progress)


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def build_table(
    space: SearchSpace,
    measurer: Measurer,
    path: str | os.PathLike,
    *,
    chunk_size: int = 8,
    show_progress: bool = False,
) -> LatencyTable:
    """Measure every candidate op of `space` that `path` does not hold yet; write after every chunk.

    An existing file must be a table of this space, resolution, classes, backend and thread count,
    otherwise `LatencyTableError` (a table is never silently overwritten or mixed)."""
    path = Path(path)
    metadata = {**measurer.metadata(), "source": "measured", "space_options": space.options}
    if path.exists():
        table = LatencyTable.load(path)
        table.check_fits(
            space=space.name, resolution=space.resolution, num_classes=space.num_classes,
            backend=metadata.get("backend"), threads=metadata.get("threads"), source=str(path),
        )
        logger.info("resuming %s: %d entries present", path, len(table))
    else:
        table = LatencyTable(metadata, space=space.name, resolution=space.resolution, num_classes=space.num_classes)
    candidates = space.candidate_ops()
    todo = [layer for layer in candidates if layer.signature not in table]
    logger.info("%s: %d candidate ops, %d to measure", space.name, len(candidates), len(todo))
    if not todo:
        return table
    unstable = _UnstableCount()
    measure_log = logging.getLogger("predictors.latency.measure")
    measure_log.addFilter(unstable)  # one summary for the build instead of a line per chunk
    try:
        _measure_chunks(table, todo, measurer, path, chunk_size, show_progress, space.name)
    finally:
        measure_log.removeFilter(unstable)
    if unstable.items:
        logger.warning("%s: %d of %d ops measured with a spread over max_spread even after retries (the machine "
                       "was likely busy); their medians are kept. Rebuild on a quiet machine for a reliable table.",
                       path, unstable.items, len(todo))
    return table


class _UnstableCount(logging.Filter):
    """Swallows the measuring protocol's per-call unstable-items warnings and counts their items."""

    def __init__(self) -> None:
        super().__init__()
        self.items = 0

    def filter(self, record: logging.LogRecord) -> bool:
        count = getattr(record, UNSTABLE_ITEMS, None)
        if count is None:
            return True
        self.items += count
        return False


def _measure_chunks(table: LatencyTable, todo: list, measurer: Measurer, path: Path, chunk_size: int,
                    show_progress: bool, name: str) -> None:
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"measuring {name} ops", total=len(todo))
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            done_before = start
            measurements = measurer.measure_layers(
                chunk, progress=lambda n, base=done_before: bar.update(task, completed=base + n)
            )
            for layer, measurement in zip(chunk, measurements):
                table.add(layer.signature, measurement)
            table.save(path)
            bar.update(task, completed=start + len(chunk))
