"""int8 on ONNX Runtime as a latency backend and a table measurer (issue #16, item 3).

``predictors`` times modules but never imports ``compress``, so the int8 side lives here and
plugs in from below: importing this module registers the backend ``onnxruntime-int8`` in
``predictors.latency.LATENCY_BACKENDS`` (``nas`` imports it), and :class:`Int8Measurer` is the
``PrecisionMeasurer`` that ``build_table(..., precision="int8")`` and
``validate_table(..., precision="int8")`` take.

What is timed, on ORT's CPU provider with the fp32 backend's session options:

- a layer (anything but a whole ``Network``): :func:`compress.quantize_layer_export.int8_layer_model`,
  the layer quantized as our export quantizes it, between uint8 tensors (no Q of its input, no
  DQ of its output: inside an int8 network neither exists);
- a whole ``Network``: ``export_qdq`` of its calibrated all-8-bit copy, float in and float out,
  the file ``nas compress quantize`` ships (what validation compares the table against);
- a transition: one QuantizeLinear (float32 -> uint8) or DequantizeLinear of a tensor.

The device agent (``nas device serve``) is not offered for int8: it builds fp32 modules from layer
JSON and never runs code or models it is sent, and the int8 graph is made here by ``compress``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from compress.quantize_layer_export import CALIBRATION_SEED, int8_layer_model, int8_network_model, qdq_model
from predictors.latency.backends import OnnxRuntimeBackend
from predictors.latency.builder import LocalMeasurer, MeasureSettings
from predictors.latency.measure import LATENCY_BACKENDS, Measurement, PreparedOp, measure_prepared
from predictors.latency.precision import INT8
from search_spaces.build import Network

__all__ = ["INT8_BACKEND", "Int8Measurer", "Int8OnnxRuntimeBackend"]

INT8_BACKEND = "onnxruntime-int8"


@LATENCY_BACKENDS.register(INT8_BACKEND)
class Int8OnnxRuntimeBackend(OnnxRuntimeBackend):
    """ONNX Runtime on our int8 export: a layer between int8 tensors, a ``Network`` as shipped."""

    name = INT8_BACKEND

    def __init__(self, threads: int = 1) -> None:
        super().__init__(threads)

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> PreparedOp:
        if isinstance(module, Network):
            return self.prepare_onnx(int8_network_model(module, input_shape), input_shape)
        model, borders = int8_layer_model(module, input_shape)
        return self.prepare_onnx(model, tuple(borders["input_shape"]), np.dtype(borders["input"]))

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["int8"] = {
            "weights": "int8 per output channel, 7-bit codes (reduce_range), BN folded",
            "activations": "uint8 per tensor, ranges from random normal inputs (2 batches of 2, "
                           f"seed {CALIBRATION_SEED}); timing does not depend on the values",
            "layer_borders": "input and output on the int8 grid, channels-last (the one-layer export's input Q "
                             "and output DQ removed; each layer quantizes its own output)",
            "networks": "export_qdq as shipped: float input, float output",
        }
        return meta


class Int8Measurer(LocalMeasurer):
    """Measures int8 layers, whole int8 networks and Q/DQ transitions on this machine."""

    precision = INT8

    def __init__(self, threads: int = 1, settings: MeasureSettings | None = None) -> None:
        super().__init__(Int8OnnxRuntimeBackend(threads=threads), threads=threads, settings=settings)

    def metadata(self) -> dict[str, Any]:
        # the runtime is ONNX Runtime, as for the fp32 entries beside these: one table, one backend
        return {**super().metadata(), "backend": "onnxruntime", "latency_backend": INT8_BACKEND, "precision": INT8}

    def measure_transitions(self, items: Sequence[tuple[str, tuple[int, ...]]]) -> list[Measurement]:
        """QuantizeLinear / DequantizeLinear of each (kind, shape), timed together, interleaved."""
        backend = self.backend
        with backend.pinned():
            ops = []
            try:
                for kind, shape in items:
                    model, dtype = qdq_model(kind, shape)
                    ops.append(backend.prepare_onnx(model, tuple(shape), dtype))
                return measure_prepared(ops, **self.settings.to_dict())
            finally:
                for op in ops:
                    op.close()
