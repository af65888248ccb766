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

from predictors.latency.lut import LatencyTable, LatencyTableError
from predictors.latency.precision import DEQUANTIZE, FP32, QUANTIZE, check_precision, transition_key
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


class PrecisionMeasurer(Measurer, Protocol):
    """A measurer of a precision other than fp32 (`compress.quantize_backend.Int8Measurer`): its
    layers run between tensors of that precision, its whole networks as exported at it, and it
    times the transitions (QuantizeLinear / DequantizeLinear of one tensor) where a network
    enters or leaves it (`precision.py`)."""

    precision: str

    def measure_transitions(self, items: Sequence[tuple[str, tuple[int, ...]]]) -> list[Measurement]: ...


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
    precision: str = FP32,
) -> LatencyTable:
    """Measure every candidate op of `space` at `precision` that `path` does not hold yet; write
    after every chunk. A precision other than fp32 needs a `PrecisionMeasurer` of it and also
    measures the transitions at every candidate op's input and the head's output; one file holds
    several precisions, built one call each.

    An existing file must be a table of this space, resolution, classes, backend and thread count,
    otherwise `LatencyTableError` (a table is never silently overwritten or mixed)."""
    path = Path(path)
    check_precision(precision)
    if precision != FP32 and getattr(measurer, "precision", FP32) != precision:
        raise LatencyTableError(f"precision={precision!r} needs a measurer of that precision; "
                                f"{type(measurer).__name__} measures {getattr(measurer, 'precision', FP32)}")
    measured = measurer.metadata()
    metadata = {**measured, "source": "measured", "space_options": space.options}
    if path.exists():
        table = LatencyTable.load(path)
        table.check_fits(
            space=space.name, resolution=space.resolution, num_classes=space.num_classes,
            backend=metadata.get("backend"), threads=metadata.get("threads"), source=str(path),
        )
        logger.info("resuming %s: %d entries present", path, len(table))
    else:
        if precision != FP32:
            metadata["precisions"] = [precision]
        table = LatencyTable(metadata, space=space.name, resolution=space.resolution, num_classes=space.num_classes)
    table.add_precision(precision, measured)
    candidates = space.candidate_ops()
    entries = table.entries_for(precision)
    todo = [layer for layer in candidates if layer.signature not in entries]
    logger.info("%s [%s]: %d candidate ops, %d to measure", space.name, precision, len(candidates), len(todo))
    if precision != FP32:
        _measure_transitions(table, candidates, measurer, path, precision)  # type: ignore[arg-type]
    if not todo:
        return table
    unstable = _UnstableCount()
    measure_log = logging.getLogger("predictors.latency.measure")
    measure_log.addFilter(unstable)  # one summary for the build instead of a line per chunk
    try:
        _measure_chunks(table, todo, measurer, path, chunk_size, show_progress, space.name, precision)
    finally:
        measure_log.removeFilter(unstable)
    if unstable.items:
        logger.warning("%s: %d of %d ops measured with a spread over max_spread even after retries (the machine "
                       "was likely busy); their medians are kept. Rebuild on a quiet machine for a reliable table.",
                       path, unstable.items, len(todo))
    return table


def transition_items(layers: Sequence[LayerShape]) -> list[tuple[str, tuple[int, ...]]]:
    """Every (kind, shape) a network of these layers may need at a precision border: Q and DQ of
    each layer's input and of each head's output (the logits)."""
    shapes = {layer.input_shape for layer in layers}
    shapes |= {(1, layer.out_channels) for layer in layers if layer.kind == "head"}
    return [(kind, shape) for shape in sorted(shapes) for kind in (QUANTIZE, DEQUANTIZE)]


def _measure_transitions(table: LatencyTable, layers: Sequence[LayerShape], measurer: PrecisionMeasurer,
                         path: Path, precision: str) -> None:
    have = table.sections[precision].transitions
    todo = [(kind, shape) for kind, shape in transition_items(layers) if transition_key(kind, shape) not in have]
    if todo:
        for (kind, shape), measurement in zip(todo, measurer.measure_transitions(todo)):
            table.add_transition(transition_key(kind, shape), measurement, precision)
        table.save(path)


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
                    show_progress: bool, name: str, precision: str = FP32) -> None:
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"measuring {name} ops ({precision})", total=len(todo))
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            done_before = start
            measurements = measurer.measure_layers(
                chunk, progress=lambda n, base=done_before: bar.update(task, completed=base + n)
            )
            for layer, measurement in zip(chunk, measurements):
                table.add(layer.signature, measurement, precision)
            table.save(path)
            bar.update(task, completed=start + len(chunk))
