"""Graph-level steps of the int8 ONNX export (ours, no ``onnxruntime.quantization`` code), each an
exact identity on what the graph computes, and the op census of ONNX Runtime's optimized graph.

:func:`int8_graph` rewrites the TorchScript exporter's QDQ graph of a fake-quantized model:

1. **int8 initializers.** The exporter writes each weight as a float initializer behind
   QuantizeLinear -> DequantizeLinear (the file is *larger* than fp32). The Q is evaluated here,
   once, as PyTorch's fake-quant evaluates it (``rint(w * (1 / scale)) + zero_point``, float32,
   saturated), and the int8 codes replace the float weight and the Q: int8 initializer -> DQ, the
   form ORT fuses into QLinearConv / QGemm. A layer ORT cannot fuse (its output goes to a float op:
   hard-swish, a float SE gate) gets its *dequantized* weight as a float32 initializer instead:
   int8 -> DQ there would be dequantized again on every run (measured: GhostNet at 224 px 0.55x
   fp32 with 79 of its 94 convs so, before ``compress.quantize_ghost`` made all 94 int8). Biases stay float: ORT's ``BiasQuantization``
   rounds them to int32 at ``s_in * s_w``, where ``compress.quantize_ops`` already put them.
2. **One Q per tensor.** Two QuantizeLinear nodes on the same tensor with equal scale and zero
   point (a residual skip and the first conv of the block, ``compress.quantize_graph``) become one.
3. **No DQ -> Q pairs of equal parameters.** Q(DQ(q)) == q exactly when both use the same scale
   and zero point (the dequantized value divided by the same scale is within float error of an
   integer), so the pair is dropped and the consumer reads q.

4. **Float layers stay float.** ORT's ``WeightBiasQuantization`` transform quantizes the float
   weight of any Conv/Gemm whose input comes from a DequantizeLinear with a *scalar* scale
   (symmetric per-tensor int8, its own rounding): a layer a mixed policy keeps fp32 after an int8
   one, or an int8 layer ORT cannot fuse, would silently run on weights the fake-quant model never
   saw. Such a layer reads its input through its own DequantizeLinear with the same scale and zero
   point repeated per channel (axis 1): the same numbers, which that transform skips.

Unused nodes and initializers are removed, and the model passes ``onnx.checker``.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INT8_OPS", "int8_graph", "optimized_op_counts", "summarize_ops"]

# ORT's integer kernels as they appear in its optimized graph (com.microsoft contrib ops included)
INT8_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearReduceMean",
    "QLinearSoftmax", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MaxPool_int8",
})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput", "Reshape", "Flatten", "Identity"})


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _qparams(node: Any, constants: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a Q or DQ node when both are constants, else None."""
    if len(node.input) < 3 or node.input[1] not in constants or node.input[2] not in constants:
        return None
    return constants[node.input[1]], constants[node.input[2]]


def _same_qparams(a: Any, b: Any, constants: dict[str, np.ndarray]) -> bool:
    pa, pb = _qparams(a, constants), _qparams(b, constants)
    if pa is None or pb is None or pa[1].dtype != pb[1].dtype or pa[0].shape != pb[0].shape:
        return False
    same_axis = pa[0].ndim == 0 or _axis(a) == _axis(b)
    return same_axis and np.array_equal(pa[0], pb[0]) and np.array_equal(pa[1], pb[1])


def _quantize_initializer(weight: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * weight.ndim
    if scale.ndim:
        shape[axis] = -1
    inverse = (np.float32(1.0) / scale.astype(np.float32)).reshape(shape)
    info = np.iinfo(zero.dtype)
    codes = np.rint(weight.astype(np.float32) * inverse) + zero.reshape(shape).astype(np.float32)
    return np.clip(codes, info.min, info.max).astype(zero.dtype)


def _rename_inputs(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    if any(output.name == old for output in graph.output):  # a Q never ends our graphs
        raise RuntimeError(f"int8_graph: would rename the graph output {old}")


FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})  # what ORT folds between a QDQ conv and its output Q


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _runs_int8(layer: Any, users: dict[str, list[Any]]) -> bool:
    """Whether ORT can fuse this Conv/Gemm into an int8 kernel: its output (through a single
    ReLU/Clip) goes to a QuantizeLinear and nothing else."""
    out = layer.output[0]
    while len(users[out]) == 1 and users[out][0].op_type in FUSED_ACTIVATIONS:
        out = users[out][0].output[0]
    return bool(users[out]) and all(user.op_type == "QuantizeLinear" for user in users[out])


def _fold_weight_quantizers(graph: Any, constants: dict[str, np.ndarray]) -> tuple[int, int]:
    """Weights of layers ORT runs on int8 kernels become int8 initializers; weights of layers it
    cannot fuse (a float op follows them) become their dequantized float32 values, so ORT does not
    dequantize them again on every run (exact: the same float32 products DQ would compute)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    users = _consumers(graph)
    int8, dequantized = 0, 0
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        weight, params = node.input[0], _qparams(node, constants)
        if weight not in initializers or params is None or constants[weight].dtype != np.float32:
            continue
        codes = _quantize_initializer(constants[weight], *params, _axis(node))
        dqs = users[node.output[0]]
        layers = [layer for dq in dqs for layer in users[dq.output[0]]]
        fused = all(dq.op_type == "DequantizeLinear" for dq in dqs) and all(_runs_int8(layer, users) for layer in layers)
        if fused:
            name = f"{weight}_quantized"
            graph.initializer.append(numpy_helper.from_array(codes, name))
            _rename_inputs(graph, node.output[0], name)
            int8 += 1
            continue
        for dq in dqs:  # DequantizeLinear's own arithmetic, float32: (code - zero point) * scale
            scale, zero = _qparams(dq, constants)
            shape = [1] * codes.ndim
            if scale.ndim:
                shape[_axis(dq)] = -1
            values = ((codes.astype(np.int32) - zero.reshape(shape).astype(np.int32)).astype(np.float32)
                      * scale.astype(np.float32).reshape(shape))
            name = f"{weight}_dequantized"
            graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), name))
            _rename_inputs(graph, dq.output[0], name)
        dequantized += 1
    return int8, dequantized


def _merge_duplicate_quantizers(graph: Any, constants: dict[str, np.ndarray]) -> int:
    kept: dict[str, list[Any]] = collections.defaultdict(list)
    merged = 0
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        twin = next((k for k in kept[node.input[0]] if _same_qparams(k, node, constants)), None)
        if twin is None:
            kept[node.input[0]].append(node)
        else:
            _rename_inputs(graph, node.output[0], twin.output[0])
            merged += 1
    return merged


def _drop_requantize_pairs(graph: Any, constants: dict[str, np.ndarray]) -> int:
    producers = {out: node for node in graph.node for out in node.output}
    dropped = 0
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        dq = producers.get(node.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear" and _same_qparams(dq, node, constants):
            _rename_inputs(graph, node.output[0], dq.input[0])
            dropped += 1
    return dropped


def _input_channels(layer: Any, weight: np.ndarray) -> int:
    if layer.op_type == "Conv":
        return int(weight.shape[1]) * next((a.i for a in layer.attribute if a.name == "group"), 1)
    trans_b = next((a.i for a in layer.attribute if a.name == "transB"), 0)
    return int(weight.shape[1] if trans_b else weight.shape[0])


def _shield_float_layers(graph: Any) -> int:
    """Step 4 of the module docstring; returns how many float layers were shielded."""
    from onnx import helper, numpy_helper

    floats = {init.name: numpy_helper.to_array(init) for init in graph.initializer
              if init.data_type == 1}  # TensorProto.FLOAT
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    shielded = 0
    for layer in [n for n in graph.node if n.op_type in ("Conv", "Gemm")]:
        dq = producers.get(layer.input[0])
        if layer.input[1] not in floats or dq is None or dq.op_type != "DequantizeLinear":
            continue
        params = _qparams(dq, constants)
        if params is None or params[0].ndim != 0:
            continue
        channels = _input_channels(layer, floats[layer.input[1]])
        name = f"{layer.name or layer.output[0]}_float_input"
        graph.initializer.extend([
            numpy_helper.from_array(np.full(channels, params[0], dtype=params[0].dtype), f"{name}_scale"),
            numpy_helper.from_array(np.full(channels, params[1], dtype=params[1].dtype), f"{name}_zero_point"),
        ])
        node = helper.make_node("DequantizeLinear", [dq.input[0], f"{name}_scale", f"{name}_zero_point"],
                                [name], name=name, axis=1)
        graph.node.insert(list(graph.node).index(layer), node)
        layer.input[0] = name
        shielded += 1
    return shielded


def _remove_unused(graph: Any) -> None:
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def int8_graph(onnx_model: bytes) -> tuple[bytes, dict[str, int]]:
    """The rewritten model (module docstring) and how many of each rewrite were made."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    constants = _constants(graph)
    int8, dequantized = _fold_weight_quantizers(graph, constants)
    counts = {"int8_weights": int8, "float_weights": dequantized}
    counts["merged_quantizers"] = _merge_duplicate_quantizers(graph, constants)
    counts["dropped_dq_q_pairs"] = _drop_requantize_pairs(graph, constants)
    counts["shielded_float_layers"] = _shield_float_layers(graph)
    _remove_unused(graph)
    onnx.checker.check_model(model)
    return model.SerializeToString(), counts


def optimized_op_counts(onnx_model: bytes, threads: int = 1) -> dict[str, int]:
    """Op types of the graph ONNX Runtime runs (CPU provider, all optimizations, as the latency
    backend), read from ``SessionOptions.optimized_model_filepath`` in a temporary directory."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return dict(collections.Counter(node.op_type for node in graph.node))


def summarize_ops(counts: dict[str, int]) -> dict[str, int]:
    """int8 kernels, Q/DQ left, layout ops (transposes/reorders), and float compute ops."""
    summary = {"int8": 0, "qdq": 0, "layout": 0, "float": 0}
    for op, n in counts.items():
        kind = "int8" if op in INT8_OPS else "qdq" if op in QDQ_OPS else "layout" if op in LAYOUT_OPS else "float"
        summary[kind] += n
    return summary
