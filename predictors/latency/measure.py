"""Timing protocol: how a module's batch-1 latency is measured, and the backend interface.

Backends live in `backends.py` (``LATENCY_BACKENDS``: torch, onnxruntime, cuda).

Protocol of :func:`measure_modules` (the contract behind every number in a latency table):

1. **Prepare** every item once (copy, eval, export and session, fixed input); not timed.
2. **Warm up**: ``warmup`` untimed runs per item (allocators, caches, lazy kernel choice).
3. **Interleaved rounds**: in each of ``blocks`` rounds every item is timed for one block of
   ``block_runs`` back-to-back runs (one ``time.perf_counter_ns`` pair, or CUDA event pair, around
   the block); the block contributes its per-run mean. The item order rotates every round, so
   slow drift of a shared machine hits all items alike. One untimed run precedes each block, so
   the block times the item warm rather than the cache misses left by the previous item
   (without it a 5 us op read 7-8 us).
4. **Summary** over the blocks: ``median_ms`` is the median, ``p10_ms``/``p90_ms`` the 10th/90th
   percentiles (linear interpolation), ``runs = blocks * block_runs``.
5. **Retry**: an item whose ``spread = (p90 - p10) / median`` exceeds ``max_spread`` is measured
   again by steps 3-4 (interleaved with the other unstable items) up to ``retries`` times; the
   measurement with the smallest spread is kept, with a logged warning if still above.

The garbage collector is paused while timing (as ``timeit`` does). ``progress(n_done)`` gets the
cumulative number of finished items, ending at ``len(items)``. Timings include each backend's
per-call overhead (~3-5 us), which a per-op latency table therefore sums once per op.

Defaults ``warmup=10, blocks=15, block_runs=10`` (150 timed runs) on a shared 2-core x86 VM:
measuring an MBConv block with onnxruntime takes ~20 ms at 16x16 and ~90 ms at 56x56, including
export; repeated calls gave medians within ~4% and spreads of 0.02-0.06.
"""

from __future__ import annotations

import abc
import contextlib
import gc
import logging
import math
import os
import platform
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from search_spaces.registry import Registry

logger = logging.getLogger(__name__)

BATCH_SIZE = 1

LATENCY_BACKENDS: Registry[type[LatencyBackend]] = Registry("latency backend")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One item's latency summary over its timed blocks, in milliseconds per run."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int  # timed runs behind the summary: blocks * block_runs

    def __post_init__(self) -> None:
        for name in ("median_ms", "p10_ms", "p90_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Measurement.{name}={value!r}: expected a finite number >= 0")
        if not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise ValueError(f"Measurement: expected p10_ms <= median_ms <= p90_ms, got {self}")
        _check_count("Measurement.runs", self.runs, 1)

    @property
    def spread(self) -> float:
        """Relative width of the 10-90 percentile band: (p90 - p10) / median."""
        if self.median_ms == 0:
            return 0.0 if self.p90_ms == self.p10_ms else math.inf
        return (self.p90_ms - self.p10_ms) / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        names = {f.name for f in fields(cls)}
        if d.keys() != names:
            raise ValueError(f"Measurement.from_dict: keys {sorted(d)}; expected {sorted(names)}")
        return cls(**d)


class PreparedOp(abc.ABC):
    """One module made ready on one backend: all set-up done, only runs remain."""

    @abc.abstractmethod
    def time_block(self, n: int) -> float:
        """Run ``n`` times back to back; the mean seconds per run."""

    @abc.abstractmethod
    def infer(self) -> np.ndarray:
        """One run on the fixed input, output as numpy (for correctness checks)."""

    def run_once(self) -> float:
        return self.time_block(1)

    def close(self) -> None:
        """Release sessions or device memory early (the default holds nothing worth freeing)."""


class LatencyBackend(abc.ABC):
    """Times modules on one device and runtime with a fixed thread count."""

    name: ClassVar[str]

    def __init__(self, threads: int = 1) -> None:
        _check_count("threads", threads, 1)
        if threads > (cores := os.cpu_count() or 1):
            logger.warning("threads=%d exceeds the %d logical cores; timings will be oversubscribed", threads, cores)
        self.threads = threads

    @abc.abstractmethod
    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp: ...

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Process-global settings (thread counts) that hold while measuring."""
        yield

    def metadata(self) -> dict[str, Any]:
        """Where and with what software the numbers were taken; JSON-serialisable."""
        return {
            "backend": self.name, "threads": self.threads, "batch_size": BATCH_SIZE,
            "device": socket.gethostname(), "cpu_model": _cpu_model(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        }


def get_backend(name: str, threads: int = 1, **kw: Any) -> LatencyBackend:
    """The registered backend ``name`` (``LATENCY_BACKENDS.names()``) with ``threads`` threads."""
    return LATENCY_BACKENDS.get(name)(threads=threads, **kw)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what the platform module knows
    return platform.processor() or platform.machine() or "unknown"


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an int >= {minimum}")


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
    """Validate a batch-1 input shape such as (1, C, H, W) or (1, features)."""
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) < 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(f"input_shape={input_shape!r}: expected a tuple of positive ints like (1, C, H, W)")
    if input_shape[0] != BATCH_SIZE:
        raise ValueError(f"input_shape={tuple(input_shape)!r}: batch dimension must be {BATCH_SIZE}")
    return tuple(input_shape)


def _summarise(block_seconds: Sequence[float], block_runs: int) -> Measurement:
    ms = np.asarray(block_seconds, dtype=float) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return Measurement(float(median), float(p10), float(p90), runs=len(ms) * block_runs)


def _interleaved(ops: Sequence[PreparedOp], blocks: int, block_runs: int) -> list[list[float]]:
    """Per op, the per-run seconds of each block, timed round-robin with a rotating start."""
    samples: list[list[float]] = [[] for _ in ops]
    for round_index in range(blocks):
        for k in range(len(ops)):
            i = (k + round_index) % len(ops)
            ops[i].time_block(1)  # untimed: bring this op's weights back into cache
            samples[i].append(ops[i].time_block(block_runs))
    return samples


UNSTABLE_ITEMS = "unstable_items"  # log-record attribute: how many items a call left unstable


def measure_modules(
    backend: LatencyBackend,
    items: Sequence[tuple[nn.Module, tuple[int, ...]]],
    *,
    warmup: int = 10,
    blocks: int = 15,
    block_runs: int = 10,
    max_spread: float = 0.2,
    retries: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[Measurement]:
    """Time each (module, input_shape) at batch 1 on ``backend`` by the protocol above, in order."""
    for name, value, minimum in (("warmup", warmup, 0), ("blocks", blocks, 1), ("block_runs", block_runs, 1),
                                 ("retries", retries, 0)):
        _check_count(name, value, minimum)
    if not (isinstance(max_spread, (int, float)) and max_spread > 0):
        raise ValueError(f"max_spread={max_spread!r}: expected a number > 0")
    with backend.pinned():
        ops: list[PreparedOp] = []
        try:
            for index, (module, input_shape) in enumerate(items):
                try:
                    ops.append(backend.prepare(module, input_shape))
                except (ValueError, TypeError, RuntimeError) as exc:
                    if type(exc) not in (ValueError, TypeError, RuntimeError):
                        raise  # a subclass may not take a plain message; its own text must do
                    raise type(exc)(f"items[{index}]: {exc}") from exc  # say which item, same type
            return measure_prepared(ops, warmup=warmup, blocks=blocks, block_runs=block_runs, max_spread=max_spread,
                                    retries=retries, progress=progress)
        finally:
            for op in ops:
                op.close()


def measure_prepared(
    ops: Sequence[PreparedOp],
    *,
    warmup: int = 10,
    blocks: int = 15,
    block_runs: int = 10,
    max_spread: float = 0.2,
    retries: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[Measurement]:
    """The protocol of :func:`measure_modules` on ops already prepared (e.g. ONNX models built
    elsewhere: ``backends.measure_onnx``); the caller holds the backend's ``pinned()`` and closes the ops."""
    best: dict[int, Measurement] = {}
    gc_was_enabled = gc.isenabled()
    try:
        gc.disable()  # a collection inside a block would land on one item only
        for op in ops:
            if warmup:
                op.time_block(warmup)
        pending, done = list(range(len(ops))), 0
        for attempt in range(retries + 1):
            for i, seconds in zip(pending, _interleaved([ops[i] for i in pending], blocks, block_runs)):
                fresh = _summarise(seconds, block_runs)
                if i not in best or fresh.spread < best[i].spread:
                    best[i] = fresh
            last = attempt == retries
            pending = [] if last else [i for i in pending if best[i].spread > max_spread]
            if progress is not None and len(ops) - len(pending) > done:
                done = len(ops) - len(pending)  # whatever is no longer pending is final
                progress(done)
            if not pending:
                break
            logger.info("re-measuring %d item(s) with spread > %.2f", len(pending), max_spread)
    finally:
        if gc_was_enabled:
            gc.enable()
    unstable = sorted((m.spread, i) for i, m in best.items() if m.spread > max_spread)
    if unstable:  # one line per call: a table build makes hundreds of calls on a busy machine
        worst, index = unstable[-1]
        logger.warning("%d of %d item(s) still unstable after %d retries (spread > %.2f; worst items[%d] at %.2f): "
                       "the machine is likely busy; their medians are kept", len(unstable), len(ops), retries,
                       max_spread, index, worst, extra={UNSTABLE_ITEMS: len(unstable)})
    return [best[i] for i in range(len(ops))]


def measure_module(
    backend: LatencyBackend, module: nn.Module, input_shape: tuple[int, ...], **kw: Any
) -> Measurement:
    """:func:`measure_modules` for a single item (same keyword arguments)."""
    return measure_modules(backend, [(module, input_shape)], **kw)[0]
