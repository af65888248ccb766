"""Latency backends: time one ``nn.Module`` (a block or a whole model) at batch 1 on this device.

Backends (``LATENCY_BACKENDS``, built with :func:`get_backend`):

* ``torch`` -- PyTorch eager on CPU under ``torch.inference_mode()``, module in ``eval()``.
  ``torch.set_num_threads(threads)`` is set for the duration of a measurement call and the
  previous value restored afterwards (the thread count is process-global state).
* ``onnxruntime`` -- the module exported to ONNX in memory (TorchScript exporter, opset
  :data:`ONNX_OPSET`; ``exporter="dynamo"`` selects the torch.export one) and run by ONNX Runtime's
  CPUExecutionProvider: ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``,
  ``ORT_SEQUENTIAL``, ``ORT_ENABLE_ALL``. The model never touches disk. At ``prepare`` time the
  ONNX output is checked against eager PyTorch (``allclose``, atol 1e-4, rtol 1e-3), so an
  unfaithful export fails loudly instead of entering a latency table.
* ``cuda`` -- PyTorch eager on the current GPU, timed with CUDA events and synchronisation.

Every backend deep-copies the module before ``eval()``/export/``.to(device)``: measuring never
mutates the caller's model. The input is a fixed random tensor from a seeded generator.

Protocol (:func:`measure_modules`), the contract users of latency numbers rely on:

1. **Prepare** every item once (copy, eval, export + session, fixed input; not timed).
2. **Warm-up**: ``warmup`` untimed runs per item (allocator, caches, lazy kernel selection).
3. **Interleaved rounds**: for each of ``blocks`` rounds, every item is timed for one block of
   ``block_runs`` back-to-back runs, one ``time.perf_counter_ns`` pair around the block (CUDA:
   an event pair), and the block contributes its per-run mean. The item order is rotated
   every round, so slow drift of a shared machine (other jobs, frequency changes) hits all
   items alike instead of biasing whichever item was timed during a busy spell. Each block is
   preceded by one untimed run, so a block measures the item warm, not the cache traffic
   left by the previous item.
4. **Summary** over the blocks' per-run means: ``median_ms`` is the median, ``p10_ms``/``p90_ms``
   the 10th/90th percentiles (linear interpolation), ``runs = blocks * block_runs``.
5. **Retry**: an item whose ``spread = (p90 - p10) / median`` exceeds ``max_spread`` is measured
   again with steps 3-4 (interleaved with the other unstable items), up to ``retries`` times;
   the measurement with the smallest spread is kept (and a warning logged if still unstable).

Python's garbage collector is disabled while timing (as ``timeit`` does). ``progress(n_done)``
receives the cumulative number of finished items, ending at ``len(items)``.

Defaults (``warmup=10, blocks=15, block_runs=10``) were chosen on a noisy shared 2-core
x86 VM: a small MBConv block on onnxruntime (~40 us) takes ~10 ms to measure, a 56x56 one
(~0.4 ms) ~0.1 s; repeated measurements of the same block agreed within a few percent.
Each timing includes the backend's per-call overhead (~3-5 us for an ORT ``run`` or an eager
call), which a per-op latency table sums once per op.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import gc
import io
import logging
import math
import os
import platform
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from search_spaces.registry import Registry

logger = logging.getLogger(__name__)

BATCH_SIZE = 1
ONNX_OPSET = 18  # supported by both exporters and by every onnxruntime >= 1.14
INPUT_SEED = 0
EXPORT_ATOL = 1e-4
EXPORT_RTOL = 1e-3

LATENCY_BACKENDS: Registry[type[LatencyBackend]] = Registry("latency backend")


@dataclass(frozen=True, slots=True)
class Measurement:
    """Summary of one item's timed blocks, in milliseconds per run."""

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
            raise ValueError(
                f"Measurement: expected p10_ms <= median_ms <= p90_ms, got "
                f"{self.p10_ms} <= {self.median_ms} <= {self.p90_ms}"
            )
        if not isinstance(self.runs, int) or isinstance(self.runs, bool) or self.runs < 1:
            raise ValueError(f"Measurement.runs={self.runs!r}: expected an int >= 1")

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
        missing, unknown = names - d.keys(), d.keys() - names
        if missing or unknown:
            raise ValueError(
                f"Measurement.from_dict: missing {sorted(missing)}, unknown {sorted(unknown)}; "
                f"expected keys {sorted(names)}"
            )
        return cls(**d)


class PreparedOp(abc.ABC):
    """One module made ready to time on one backend: set-up is done, only runs remain."""

    @abc.abstractmethod
    def time_block(self, n: int) -> float:
        """Run ``n`` times back to back; return the mean seconds per run."""

    @abc.abstractmethod
    def infer(self) -> np.ndarray:
        """One run on the fixed input; the output as a numpy array (for correctness checks)."""

    def run_once(self) -> float:
        return self.time_block(1)

    def close(self) -> None:  # release sessions / device memory; default has nothing to free
        return None


class LatencyBackend(abc.ABC):
    """Times modules on one device/runtime with a fixed thread count."""

    name: ClassVar[str]

    def __init__(self, threads: int = 1) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r}: expected an int >= 1")
        cores = os.cpu_count() or 1
        if threads > cores:
            logger.warning("threads=%d exceeds the %d logical cores; timings will be oversubscribed", threads, cores)
        self.threads = threads

    @abc.abstractmethod
    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp: ...

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Context in which measurements run (process-global settings such as thread counts)."""
        yield

    def metadata(self) -> dict[str, Any]:
        """Where and with what software the numbers were taken; JSON-serialisable."""
        return {
            "backend": self.name,
            "device": socket.gethostname(),
            "cpu_model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "threads": self.threads,
            "batch_size": BATCH_SIZE,
            "platform": platform.platform(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        }


def get_backend(name: str, threads: int = 1, **kw: Any) -> LatencyBackend:
    """The registered backend ``name`` (see ``LATENCY_BACKENDS.names()``) with ``threads`` threads."""
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


def _fixed_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(INPUT_SEED)  # explicit seed, no global RNG state
    return torch.randn(input_shape, generator=generator)


def _eager_copy(module: nn.Module, input_shape: Any) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A private eval() copy, the fixed input, and the eager CPU output (checks the shape fits)."""
    shape = check_input_shape(input_shape)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    private = copy.deepcopy(module).cpu().eval()
    x = _fixed_input(shape)
    try:
        with torch.inference_mode():
            out = private(x)
    except Exception as exc:  # the module's own error says why; we add which shape it was
        raise ValueError(f"input_shape={shape!r} does not fit {type(module).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{type(module).__name__} returned {type(out).__name__}; expected one Tensor")
    return private, x, out


class _TorchOp(PreparedOp):
    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        self.module, self.x = module, x

    def time_block(self, n: int) -> float:
        module, x = self.module, self.x
        with torch.inference_mode():
            start = time.perf_counter_ns()
            for _ in range(n):
                module(x)
            stop = time.perf_counter_ns()
        return (stop - start) / n * 1e-9

    def infer(self) -> np.ndarray:
        with torch.inference_mode():
            return self.module(self.x).cpu().numpy()


@LATENCY_BACKENDS.register("torch")
class TorchBackend(LatencyBackend):
    """PyTorch eager on CPU; ``torch.set_num_threads(threads)`` while measuring, restored after."""

    name = "torch"

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        private, x, _ = _eager_copy(module, input_shape)
        return _TorchOp(private, x)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["mkldnn"] = bool(torch.backends.mkldnn.is_available())
        return meta


class _OrtOp(PreparedOp):
    def __init__(self, session: Any, x: np.ndarray) -> None:
        self.session = session
        self.feed = {session.get_inputs()[0].name: x}
        # Plain run() on a preallocated input: io_binding saved only ~1.5 us/call here.
        self.output_names = [session.get_outputs()[0].name]

    def time_block(self, n: int) -> float:
        run, names, feed = self.session.run, self.output_names, self.feed
        start = time.perf_counter_ns()
        for _ in range(n):
            run(names, feed)
        stop = time.perf_counter_ns()
        return (stop - start) / n * 1e-9

    def infer(self) -> np.ndarray:
        return self.session.run(self.output_names, self.feed)[0]

    def close(self) -> None:
        self.session = None


def export_onnx(module: nn.Module, x: torch.Tensor, exporter: str = "torchscript") -> bytes:
    """Serialised ONNX model of an eval() module for input ``x``, built in memory."""
    if exporter == "torchscript":
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # Shapes are fixed at batch 1 and the result is checked against eager output, so
            # the deprecation notice and tracer warnings carry no information here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=ONNX_OPSET, do_constant_folding=True)
        return buffer.getvalue()
    if exporter == "dynamo":
        program = torch.onnx.export(module, (x,), dynamo=True, opset_version=ONNX_OPSET, external_data=False, verbose=False)
        return program.model_proto.SerializeToString()
    raise ValueError(f"exporter={exporter!r}: expected 'torchscript' or 'dynamo'")


@LATENCY_BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime CPUExecutionProvider on an in-memory ONNX export of the module."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, exporter: str = "torchscript", check_export: bool = True) -> None:
        super().__init__(threads)
        if exporter not in ("torchscript", "dynamo"):
            raise ValueError(f"exporter={exporter!r}: expected 'torchscript' (fast, default) or 'dynamo'")
        self.exporter, self.check_export = exporter, check_export

    def session_options(self) -> dict[str, Any]:
        return {
            "intra_op_num_threads": self.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "providers": ["CPUExecutionProvider"],
        }

    def _session(self, model: bytes) -> Any:
        import onnxruntime as ort  # imported on use: heavy, and only this backend needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's info lines are noise in a LUT build
        # No optimized_model_filepath and no profiling: the session writes no files anywhere.
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        private, x, reference = _eager_copy(module, input_shape)
        start = time.perf_counter()
        op = _OrtOp(self._session(export_onnx(private, x, self.exporter)), x.numpy())
        logger.debug("exported %s (%s) in %.3f s", type(module).__name__, self.exporter, time.perf_counter() - start)
        if self.check_export:
            got, want = op.infer(), reference.numpy()
            if got.shape != want.shape or not np.allclose(got, want, atol=EXPORT_ATOL, rtol=EXPORT_RTOL):
                error = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.nan
                raise RuntimeError(
                    f"ONNX export of {type(module).__name__} is not faithful: output {got.shape} vs eager "
                    f"{tuple(want.shape)}, max abs error {error:.3g} (allowed atol={EXPORT_ATOL}, rtol={EXPORT_RTOL})"
                )
        return op

    def metadata(self) -> dict[str, Any]:
        import onnx
        import onnxruntime as ort

        meta = super().metadata()
        meta["versions"].update(onnxruntime=ort.__version__, onnx=onnx.__version__, onnx_opset=ONNX_OPSET)
        meta["exporter"] = self.exporter
        meta["session_options"] = self.session_options()
        return meta


class _CudaOp(PreparedOp):
    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        self.module, self.x = module, x
        self.start, self.stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def time_block(self, n: int) -> float:
        module, x = self.module, self.x
        with torch.inference_mode():
            torch.cuda.synchronize(x.device)  # nothing queued from earlier work may leak into the block
            self.start.record()
            for _ in range(n):
                module(x)
            self.stop.record()
            self.stop.synchronize()
        return self.start.elapsed_time(self.stop) / n * 1e-3  # elapsed_time is in ms

    def infer(self) -> np.ndarray:
        with torch.inference_mode():
            return self.module(self.x).cpu().numpy()

    def close(self) -> None:
        self.module = self.x = None  # type: ignore[assignment]


@LATENCY_BACKENDS.register("cuda")
class CudaBackend(LatencyBackend):
    """PyTorch eager on the current CUDA device, timed with CUDA events."""

    name = "cuda"

    def __init__(self, threads: int = 1) -> None:
        super().__init__(threads)
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"latency backend 'cuda' needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                f"use 'torch' or 'onnxruntime' to measure on the CPU"
            )

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        private, x, _ = _eager_copy(module, input_shape)
        device = torch.device("cuda", torch.cuda.current_device())
        return _CudaOp(private.to(device), x.to(device))

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # host-side threads still matter for launch overhead
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["device"] = torch.cuda.get_device_name()
        meta["host"] = socket.gethostname()
        meta["versions"].update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        meta["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        return meta


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


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an int >= {minimum}")


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
    """Time each (module, input_shape) at batch 1 on ``backend`` with the module's protocol."""
    _check_count("warmup", warmup, 0)
    _check_count("blocks", blocks, 1)
    _check_count("block_runs", block_runs, 1)
    _check_count("retries", retries, 0)
    if not (isinstance(max_spread, (int, float)) and max_spread > 0):
        raise ValueError(f"max_spread={max_spread!r}: expected a number > 0")
    results: list[Measurement | None] = [None] * len(items)
    gc_was_enabled = gc.isenabled()
    with backend.pinned():
        ops: list[PreparedOp] = []
        try:
            for index, (module, input_shape) in enumerate(items):
                try:
                    ops.append(backend.prepare(module, input_shape))
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"items[{index}]: {exc}") from exc
            gc.disable()  # a collection inside a block would land on one item only
            for op in ops:
                if warmup:
                    op.time_block(warmup)
            pending, done = list(range(len(ops))), 0
            for attempt in range(retries + 1):
                samples = _interleaved([ops[i] for i in pending], blocks, block_runs)
                for i, seconds in zip(pending, samples):
                    fresh = _summarise(seconds, block_runs)
                    best = results[i]
                    if best is None or fresh.spread < best.spread:
                        results[i] = fresh
                unstable = [i for i in pending if results[i].spread > max_spread]  # type: ignore[union-attr]
                finished = len(pending) - (len(unstable) if attempt < retries else 0)
                if finished and progress is not None:
                    done += finished
                    progress(done)
                if not unstable:
                    break
                if attempt < retries:
                    logger.info("re-measuring %d item(s) with spread > %.2f", len(unstable), max_spread)
                    pending = unstable
                else:
                    for i in unstable:
                        logger.warning(
                            "items[%d] still unstable after %d retries: spread %.2f > max_spread %.2f",
                            i, retries, results[i].spread, max_spread,  # type: ignore[union-attr]
                        )
        finally:
            if gc_was_enabled:
                gc.enable()
            for op in ops:
                op.close()
    return [r for r in results if r is not None]


def measure_module(
    backend: LatencyBackend, module: nn.Module, input_shape: tuple[int, ...], **kw: Any
) -> Measurement:
    """:func:`measure_modules` for a single item (same keyword arguments)."""
    return measure_modules(backend, [(module, input_shape)], **kw)[0]
