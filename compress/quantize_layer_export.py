"""One layer as it runs inside an int8 network, as ONNX: what an int8 latency table times.

``export_qdq`` of a one-layer model is a float-in, float-out graph: a QuantizeLinear of the input,
the layer's int8 kernels, and a DequantizeLinear of the output (or a float conv, where the layer's
last conv feeds nothing quantized). Inside an int8 network neither border is there: the tensor
between two layers stays on its int8 grid, the quantize folded into the producing conv
(QLinearConv's output) or, after a float op (a residual add's float sum, GhostNet's concat), a
standalone QuantizeLinear that the *next* layer's input needs. So :func:`int8_layer_model`:

1. quantizes the layer as ``nas compress quantize`` does (``apply_policy`` with a uniform 8-bit
   policy: BN folded, 7-bit weight codes, the int8 points of ``compress.quantize_graph``), with
   an 8-bit quantizer on its output (not on the head, whose logits already have one), calibrated
   on seeded random batches (latency does not depend on the values);
2. exports it with ``export_qdq`` (int8 initializers, one Q per tensor);
3. removes the input's QuantizeLinear (the graph input becomes the uint8 tensor the previous layer
   hands over) and the output's DequantizeLinear (the output is the uint8 tensor the next layer
   reads). Each layer thus pays for quantizing its output and never for its input: every tensor of
   the network is quantized once, as in the whole model;
4. makes a 4-D input and output channels-last (an explicit Transpose to NCHW after the input and
   back before the output). ORT runs QLinearConv in NHWC and puts a Transpose at each border of a
   graph; inside the whole network those cancel between layers (a MobileNet-like int8 network keeps
   two: after the input, before the head's pool). Our explicit pair cancels ORT's, so the optimized
   one-layer graph holds only the layer's kernels (measured: stem, plain and residual MBConv, 2
   Transposes each before, none after; the head keeps the one before its float pool).

Where the input feeds a float op first (a ShuffleNet unit's channel split), it stays float (no
single Q to remove; the layer pays no DQ of its input). The alternative -- time the layer with
its borders and subtract a separately measured Q+DQ pair -- subtracts two noisy numbers of similar
size for small layers; ``bench.int8_table`` measures both on sample layers.

:func:`qdq_model` builds the standalone QuantizeLinear / DequantizeLinear of one tensor: the
transition a mixed-precision network pays where the precision changes (``predictors.latency.precision``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.quantize import apply_policy, calibrate
from compress.quantize_export import export_qdq
from compress.quantize_ops import ActivationQuantizer
from compress.quantize_policy import uniform_policy
from search_spaces.build import Head

__all__ = ["CALIBRATION_SEED", "int8_layer_model", "int8_network_model", "qdq_model", "quantized_for_latency"]

CALIBRATION_SEED = 0
ACTIVATION_SCALE, ACTIVATION_ZERO = 0.05, 128  # any grid will do for timing a Q or DQ


class _WithOutputQuantizer(nn.Module):
    """A layer followed by an 8-bit quantizer of its output: the Q the next layer's input needs."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.output_quant = ActivationQuantizer(8, name="layer output")

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quant(self.layer(x))


class _HeadOnly(nn.Module):
    """The head under the attribute ``add_int8_points`` looks for (its conv's output and its logits
    get their quantizers there, as in a whole network)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


def quantized_for_latency(model: nn.Module, input_shape: Sequence[int], *, batches: int = 2) -> nn.Module:
    """An all-8-bit quantized copy of ``model`` calibrated on ``batches`` seeded random batches of 2."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    shape = (2, *tuple(input_shape)[1:])
    qmodel = apply_policy(copy.deepcopy(model).cpu().eval(), uniform_policy(model, 8))
    return calibrate(qmodel, [torch.randn(shape, generator=generator) for _ in range(batches)]).eval()


def int8_network_model(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """A whole network exported as ``nas compress quantize`` ships it (float input and output)."""
    return export_qdq(quantized_for_latency(model, input_shape), (1, *tuple(input_shape)[1:]))


def int8_layer_model(layer: nn.Module, input_shape: Sequence[int]) -> tuple[bytes, dict[str, Any]]:
    """The layer between int8 tensors (module docstring) and its borders: ``{"input": "uint8" |
    "float32", "output": "uint8" | "float32", "input_shape": the graph input's shape (channels-last
    for a 4-D input)}``."""
    wrapped = _HeadOnly(layer) if isinstance(layer, Head) else _WithOutputQuantizer(layer)
    exported = int8_network_model(wrapped, input_shape)
    stripped, borders = strip_borders(exported)
    return channels_last_borders(stripped, borders)


def channels_last_borders(onnx_model: bytes, borders: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A 4-D graph input and output made NHWC by explicit Transposes (module docstring, step 4)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    for value, perm, at_input in ((graph.input[0], [0, 3, 1, 2], True), (graph.output[0], [0, 2, 3, 1], False)):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        inner = value.name
        value.name = f"{inner}_nhwc"
        n, c, h, w = (d.dim_value for d in dims)
        for dim, size in zip(dims, (n, h, w, c)):
            dim.dim_value = size
        if at_input:
            graph.node.insert(0, helper.make_node("Transpose", [value.name], [inner], perm=perm))
        else:
            graph.node.append(helper.make_node("Transpose", [inner], [value.name], perm=perm))
    onnx.checker.check_model(model)
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    return model.SerializeToString(), {**borders, "input_shape": shape}


def strip_borders(onnx_model: bytes) -> tuple[bytes, dict[str, Any]]:
    """Remove the graph input's only QuantizeLinear and the graph output's DequantizeLinear,
    retyping the input and output to the integer type of their zero points."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    types = _zero_point_types(graph)
    borders = {"input": "float32", "output": "float32"}
    source = graph.input[0]
    users = [node for node in graph.node if source.name in node.input]
    if len(users) == 1 and users[0].op_type == "QuantizeLinear" and list(users[0].input).index(source.name) == 0:
        quantize = users[0]
        graph.node.remove(quantize)
        source.name = quantize.output[0]
        source.type.tensor_type.elem_type = types[quantize.input[2]]
        borders["input"] = onnx.helper.tensor_dtype_to_np_dtype(types[quantize.input[2]]).name
    sink = graph.output[0]
    producer = next(node for node in graph.node if sink.name in node.output)
    if producer.op_type == "DequantizeLinear" and len(producer.input) == 3:
        graph.node.remove(producer)
        sink.name = producer.input[0]
        sink.type.tensor_type.elem_type = types[producer.input[2]]
        borders["output"] = onnx.helper.tensor_dtype_to_np_dtype(types[producer.input[2]]).name
    onnx.checker.check_model(model)
    return model.SerializeToString(), borders


def _zero_point_types(graph: Any) -> dict[str, int]:
    """ONNX element type of every initializer and Constant output (zero points among them)."""
    types = {init.name: init.data_type for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def qdq_model(kind: str, shape: Sequence[int]) -> tuple[bytes, np.dtype]:
    """A one-node ONNX model: ``quantize`` (float32 -> uint8) or ``dequantize`` (uint8 -> float32)
    of one tensor of ``shape``, per-tensor, as our export quantizes activations; and its input dtype."""
    import onnx
    from onnx import TensorProto, helper

    from predictors.latency.backends import ONNX_OPSET

    if kind not in ("quantize", "dequantize"):
        raise ValueError(f"kind={kind!r}: expected 'quantize' or 'dequantize'")
    to_int = kind == "quantize"
    in_type, out_type = (TensorProto.FLOAT, TensorProto.UINT8) if to_int else (TensorProto.UINT8, TensorProto.FLOAT)
    node = helper.make_node("QuantizeLinear" if to_int else "DequantizeLinear", ["x", "scale", "zero"], ["y"])
    graph = helper.make_graph(
        [node], kind, [helper.make_tensor_value_info("x", in_type, list(shape))],
        [helper.make_tensor_value_info("y", out_type, list(shape))],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [ACTIVATION_SCALE]),
                     helper.make_tensor("zero", TensorProto.UINT8, [], [ACTIVATION_ZERO])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString(), np.dtype(np.float32 if to_int else np.uint8)
