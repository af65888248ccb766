"""Latency backends: time one ``nn.Module`` (a block or a whole model) at batch 1 on this device.

Backends (``LATENCY_BACKENDS``, built with :func:`get_backend`):

* ``torch`` -- PyTorch eager on CPU, ``torch.inference_mode()``, module in ``eval()``.
  ``torch.set_num_threads(threads)`` holds during a measurement call; the previous value is
  restored after (it is process-global). glibc's malloc is pinned (:func:`pin_glibc_malloc`).
* ``onnxruntime`` -- the module exported to ONNX in memory (TorchScript exporter, opset
  :data:`ONNX_OPSET`; ``exporter="dynamo"`` picks the torch.export one), run by ONNX Runtime's
  CPUExecutionProvider with ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``,
  ``ORT_SEQUENTIAL``, ``ORT_ENABLE_ALL``. Nothing is written to disk. ``prepare`` checks the ONNX
  output against eager PyTorch (atol 1e-4, rtol 1e-3): an unfaithful export fails loudly.
* ``cuda`` -- PyTorch eager on the current GPU, timed with CUDA events after a synchronise.

Every backend deep-copies the module before ``eval()``/export/``.to(device)``, so measuring never
mutates the caller's model; the input is a fixed tensor from a seeded generator.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import math
import platform
import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from predictors.latency.measure import (
    LATENCY_BACKENDS,
    LatencyBackend,
    Measurement,
    PreparedOp,
    check_input_shape,
    measure_prepared,
)
from search_spaces.errors import DeviceError

logger = logging.getLogger(__name__)

ONNX_OPSET = 18  # accepted by both torch exporters and by onnxruntime >= 1.14
INPUT_SEED = 0
EXPORT_ATOL, EXPORT_RTOL = 1e-4, 1e-3
EXPORTERS = ("torchscript", "dynamo")
# glibc mallopt codes (malloc.h) and the values pinned for eager timing; 32 MiB is glibc's maximum.
_MALLOPT_CODES = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}
GLIBC_MALLOC_SETTINGS = {"M_TRIM_THRESHOLD": 256 << 20, "M_MMAP_THRESHOLD": 32 << 20}


def fixed_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """The input every backend times with: standard normal from a fixed seed (no global RNG)."""
    return torch.randn(input_shape, generator=torch.Generator().manual_seed(INPUT_SEED))


def fixed_array(input_shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """`fixed_input` as numpy; an integer dtype (a graph that starts on an int8 grid) gets seeded
    uniform codes over the type's range instead."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return fixed_input(input_shape).numpy().astype(dtype)
    info = np.iinfo(dtype)
    return np.random.default_rng(INPUT_SEED).integers(info.min, info.max, input_shape, dtype=dtype, endpoint=True)


def _eager_copy(module: nn.Module, input_shape: Any) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A private eval() CPU copy, the fixed input, and the eager output (proves the shape fits)."""
    shape = check_input_shape(input_shape)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    private, x = copy.deepcopy(module).cpu().eval(), fixed_input(shape)
    try:
        with torch.inference_mode():
            out = private(x)
    except Exception as exc:  # the module's own error says why; add which shape it was given
        raise ValueError(f"input_shape={shape!r} does not fit {type(module).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{type(module).__name__} returned {type(out).__name__}; expected one Tensor")
    return private, x, out


def pin_glibc_malloc() -> dict[str, int] | None:
    """Keep freed memory in the heap instead of returning it to the OS; the settings, or None.

    Under glibc's dynamic thresholds eager PyTorch page-faults its large activations afresh on
    every run (~2600 faults per run for an MBConv at 56x56), depending on the heap's history:
    the same op measured 1.0 ms pinned and 3-7 ms unpinned here, system time dominating.
    Pinned, it behaves as with jemalloc/tcmalloc. Process-wide and permanent (glibc has no
    way back to dynamic thresholds); the process keeps up to 256 MiB of freed heap. No-op off glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return None
    mallopt = ctypes.CDLL(None).mallopt
    for name, value in GLIBC_MALLOC_SETTINGS.items():
        if mallopt(_MALLOPT_CODES[name], value) != 1:
            logger.warning("mallopt(%s, %d) failed; eager timings may include page faults", name, value)
            return None
    return dict(GLIBC_MALLOC_SETTINGS)


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
    """PyTorch eager on CPU; ``pin_malloc`` applies :func:`pin_glibc_malloc` when measuring starts."""

    name = "torch"

    def __init__(self, threads: int = 1, pin_malloc: bool = True) -> None:
        super().__init__(threads)
        self.pin_malloc = pin_malloc

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        private, x, _ = _eager_copy(module, input_shape)
        return _TorchOp(private, x)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        if self.pin_malloc:
            pin_glibc_malloc()
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["mkldnn"] = bool(torch.backends.mkldnn.is_available())
        pinned = self.pin_malloc and platform.libc_ver()[0] == "glibc"
        meta["malloc"] = dict(GLIBC_MALLOC_SETTINGS) if pinned else "default"
        return meta


class _OrtOp(PreparedOp):
    def __init__(self, session: Any, x: np.ndarray) -> None:
        # Plain run() on a preallocated input: io_binding saved only ~1.5 us per call here.
        self.session, self.feed = session, {session.get_inputs()[0].name: x}
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
    """The serialised ONNX model of an eval() module for input ``x``, built in memory.

    ``torchscript`` (legacy, deprecated but ~10-20 ms per block) or ``dynamo`` (torch.export +
    onnxscript, ~0.5-0.8 s per block after a ~2.5 s first call).
    """
    if exporter == "torchscript":
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # Deprecation notices from inside torch, and tracer warnings that cannot matter: shapes
            # are fixed at batch 1 and prepare() compares the result with eager output.
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=ONNX_OPSET, do_constant_folding=True)
        return buffer.getvalue()
    if exporter == "dynamo":
        program = torch.onnx.export(
            module, (x,), dynamo=True, opset_version=ONNX_OPSET, external_data=False, verbose=False
        )
        return program.model_proto.SerializeToString()
    raise ValueError(f"exporter={exporter!r}: expected one of {EXPORTERS}")


@LATENCY_BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime's CPUExecutionProvider on an in-memory ONNX export of the module."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, exporter: str = "torchscript", check_export: bool = True) -> None:
        super().__init__(threads)
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter={exporter!r}: expected one of {EXPORTERS}")
        self.exporter, self.check_export = exporter, check_export

    def session_options(self) -> dict[str, Any]:
        """The options every session gets, as recorded in metadata (enums by name)."""
        return {
            "intra_op_num_threads": self.threads, "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"],
        }

    def session(self, model: bytes) -> Any:
        import onnxruntime as ort  # on use: heavy, and only this backend needs it

        spec, options = self.session_options(), ort.SessionOptions()
        options.intra_op_num_threads = spec["intra_op_num_threads"]
        options.inter_op_num_threads = spec["inter_op_num_threads"]
        options.execution_mode = getattr(ort.ExecutionMode, spec["execution_mode"])
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["graph_optimization_level"])
        options.log_severity_level = 3  # errors only: ORT's info lines are noise in a table build
        # No optimized_model_filepath and no profiling, so the session writes no files anywhere.
        return ort.InferenceSession(model, options, providers=spec["providers"])

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        private, x, reference = _eager_copy(module, input_shape)
        start = time.perf_counter()
        op = _OrtOp(self.session(export_onnx(private, x, self.exporter)), x.numpy())
        logger.debug("exported %s (%s) in %.3f s", type(module).__name__, self.exporter, time.perf_counter() - start)
        got, want = op.infer(), reference.numpy()
        if self.check_export and not (got.shape == want.shape and np.allclose(got, want, EXPORT_RTOL, EXPORT_ATOL)):
            error = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.nan
            raise RuntimeError(
                f"ONNX export of {type(module).__name__} is not faithful: output {got.shape} vs eager "
                f"{want.shape}, max abs error {error:.3g} (allowed atol={EXPORT_ATOL}, rtol={EXPORT_RTOL})"
            )
        return op

    def prepare_onnx(self, model: bytes, input_shape: tuple[int, ...], dtype: Any = np.float32) -> PreparedOp:
        """A serialised ONNX model (built elsewhere, e.g. an int8 export) on this backend's session,
        fed the fixed input of ``dtype`` (`fixed_array`); no export and no check against PyTorch."""
        return _OrtOp(self.session(model), fixed_array(check_input_shape(input_shape), dtype))

    def metadata(self) -> dict[str, Any]:
        import onnx
        import onnxruntime as ort

        meta = super().metadata()
        meta["versions"].update(onnxruntime=ort.__version__, onnx=onnx.__version__, onnx_opset=ONNX_OPSET)
        meta.update(exporter=self.exporter, session_options=self.session_options())
        return meta


class _CudaOp(_TorchOp):
    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        super().__init__(module, x)
        self.start, self.stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def time_block(self, n: int) -> float:
        module, x = self.module, self.x
        with torch.inference_mode():
            torch.cuda.synchronize(x.device)  # work queued earlier must not leak into the block
            self.start.record()
            for _ in range(n):
                module(x)
            self.stop.record()
            self.stop.synchronize()
        return self.start.elapsed_time(self.stop) / n * 1e-3  # elapsed_time is in ms

    def close(self) -> None:
        self.module = self.x = None  # type: ignore[assignment]  # frees device memory early


@LATENCY_BACKENDS.register("cuda")
class CudaBackend(TorchBackend):
    """PyTorch eager on the current CUDA device, timed with CUDA events; host threads as for torch."""

    name = "cuda"

    def __init__(self, threads: int = 1, pin_malloc: bool = False) -> None:
        super().__init__(threads, pin_malloc)  # off by default: host allocations are not timed
        if not torch.cuda.is_available():
            raise DeviceError(
                f"latency backend 'cuda' needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                f"use 'torch' or 'onnxruntime' to measure on the CPU"
            )

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        private, x, _ = _eager_copy(module, input_shape)
        device = torch.device("cuda", torch.cuda.current_device())
        return _CudaOp(private.to(device), x.to(device))

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(device=torch.cuda.get_device_name(), host=socket.gethostname())
        meta["versions"].update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        meta["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        return meta


def measure_onnx(backend: OnnxRuntimeBackend, models: list[bytes], input_shape: tuple[int, ...],
                 **kw: Any) -> list[Measurement]:
    """Time serialised ONNX models (same input shape) together, interleaved, by the project's
    protocol (``measure.measure_prepared``'s keyword arguments)."""
    with backend.pinned():
        ops = [backend.prepare_onnx(model, input_shape) for model in models]
        try:
            return measure_prepared(ops, **kw)
        finally:
            for op in ops:
                op.close()
