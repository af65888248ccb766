"""The int8 ONNX graph (issue #16): int8 initializers, quantization points between layers, and
what ONNX Runtime makes of it -- op counts of a tiny model's optimized graph, exact by design."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from test_quantize import batches

from compress.quantize import apply_policy, calibrate, quant_layers, quantization_disabled
from compress.quantize_export import check_qdq_export, export_qdq
from compress.quantize_graph import Int8ResidualMBConv, QuantLinearInt8Output, add_int8_points, int8_point_quantizers
from compress.quantize_onnx import int8_graph, optimized_op_counts, summarize_ops
from compress.quantize_policy import uniform_policy
from predictors.latency.backends import export_onnx
from search_spaces.build import build_model
from search_spaces.spec import ArchSpec


def relu_spec(se: float = 0.0) -> ArchSpec:
    """Stem, a stride-2 MBConv, a residual MBConv (SE optional), head conv, classifier; ReLU6 only."""
    relu6 = "relu6"
    return ArchSpec.from_dict({
        "name": "int8-tiny", "resolution": 16, "num_classes": 4, "in_channels": 3,
        "stem": {"out_channels": 8, "kernel": 3, "stride": 2, "activation": relu6, "pool": False},
        "blocks": [
            {"op": "mbconv", "out_channels": 16, "stride": 2, "kernel": 3, "expand_ratio": 3.0, "se_ratio": 0.0,
             "activation": relu6},
            {"op": "mbconv", "out_channels": 16, "stride": 1, "kernel": 3, "expand_ratio": 3.0, "se_ratio": se,
             "se_style": "mobilenetv3", "activation": relu6},
        ],
        "head": {"conv_channels": 32, "activation": relu6, "dropout": 0.0},
    })


def trained_like(spec: ArchSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(spec)
    torch.nn.init.normal_(model.head.classifier.weight, 0, 0.2)
    model.train()
    with torch.no_grad():
        for batch in batches(3):
            model(batch)
    return model.eval()


def int8_model(spec: ArchSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = trained_like(spec)
    return model, calibrate(apply_policy(model, uniform_policy(model, 8)), batches(2)).eval()


def test_residual_blocks_and_outputs_get_their_quantization_points() -> None:
    model, qmodel = int8_model(relu_spec())
    assert type(qmodel.blocks[1]) is Int8ResidualMBConv and type(qmodel.blocks[0]) is not Int8ResidualMBConv
    assert type(qmodel.head.classifier) is QuantLinearInt8Output
    # residual project, head conv, classifier logits
    assert len(int8_point_quantizers(qmodel)) == 3
    assert all(bool(q.initialized) for q in int8_point_quantizers(qmodel))
    x = torch.cat(batches(1, seed=3))
    with torch.no_grad(), quantization_disabled(qmodel):  # every point switches off: the float model again
        assert torch.allclose(qmodel(x), model(x), atol=1e-5)
    plain = apply_policy(model, uniform_policy(model, 8), int8_points=False)
    assert not int8_point_quantizers(plain) and type(plain.blocks[1]).__name__ == "MBConv"


def test_int8_graph_runs_on_int8_kernels_only() -> None:
    """All 8 convs QLinearConv, the residual add QLinearAdd, the global pool
    QLinearGlobalAveragePool (compress.quantize_graph.Int8PoolHead), the classifier QGemm; no float
    op; the input Q and output DQ end the graph."""
    _, qmodel = int8_model(relu_spec())
    onnx_bytes = export_qdq(qmodel, (1, 3, 16, 16), check_inputs=torch.cat(batches(2, seed=7)))
    counts = optimized_op_counts(onnx_bytes)
    assert counts["QLinearConv"] == 8 and counts["QLinearAdd"] == 1 and counts["QGemm"] == 1
    assert "Conv" not in counts and "FusedConv" not in counts and "Add" not in counts and "Gemm" not in counts
    assert counts["QLinearGlobalAveragePool"] == 1 and "ReduceMean" not in counts  # the head's pool
    assert counts["QuantizeLinear"] == 1 and counts["DequantizeLinear"] == 1  # the input, the logits
    assert summarize_ops(counts)["float"] == 0


def float_se_model(spec: ArchSpec) -> torch.nn.Module:
    """All-8-bit, with SE's gate and multiply left float (``add_int8_points(int8_se=False)``)."""
    model = trained_like(spec)
    qmodel = apply_policy(model, uniform_policy(model, 8), int8_points=False)
    add_int8_points(qmodel, int8_se=False)
    return calibrate(qmodel, batches(2)).eval()


def test_se_block_convs_are_int8_and_the_gate_runs_on_int8_grids() -> None:
    _, qmodel = int8_model(relu_spec(se=0.25))
    onnx_bytes = export_qdq(qmodel, (1, 3, 16, 16), check_inputs=torch.cat(batches(2, seed=7)))
    counts = optimized_op_counts(onnx_bytes)
    # SE's expand conv feeds a Q (compress.quantize_se): int8 like the rest; so is its pool; the
    # hard-sigmoid gate has no int8 kernel and stays float between DQ and Q; the multiply is QLinearMul
    assert counts["QLinearConv"] == 10 and counts.get("Conv", 0) + counts.get("FusedConv", 0) == 0
    assert counts["QLinearAdd"] == 1 and counts["QGemm"] == 1 and counts["QLinearMul"] == 1
    assert counts["HardSigmoid"] == 1 and counts["QLinearGlobalAveragePool"] == 2  # SE's and the head's


def test_float_se_gate_conv_stays_float() -> None:
    qmodel = float_se_model(relu_spec(se=0.25))
    onnx_bytes = export_qdq(qmodel, (1, 3, 16, 16), check_inputs=torch.cat(batches(2, seed=7)))
    counts = optimized_op_counts(onnx_bytes)
    # the depthwise conv before SE and SE's squeeze conv are int8; SE's expand conv feeds the float
    # gate (HardSigmoid), so it stays a float conv on dequantized weights, with pool and Mul
    assert counts["QLinearConv"] == 9 and counts.get("Conv", 0) + counts.get("FusedConv", 0) == 1
    assert counts["QLinearAdd"] == 1 and counts["QGemm"] == 1 and counts["Mul"] == 1


def test_weights_are_stored_as_int8_initializers() -> None:
    model, qmodel = int8_model(relu_spec())
    graph = onnx.load_from_string(export_qdq(qmodel, (1, 3, 16, 16))).graph
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    int8 = {name: a for name, a in arrays.items() if a.dtype == np.int8}
    assert len(int8) == len(quant_layers(qmodel)) == 9
    weights = sum(layer.weight.numel() for layer in quant_layers(qmodel).values())
    assert sum(a.size for a in int8.values()) == weights
    assert not [a for a in arrays.values() if a.dtype == np.float32 and a.size >= 64 and a.ndim >= 2]  # no float weights
    assert max(int(np.abs(a).max()) for a in int8.values()) == 63  # reduce_range codes
    fp32 = export_onnx(copy.deepcopy(model), torch.zeros(1, 3, 16, 16))
    fp32_weights = sum(init.raw_data.__len__() for init in onnx.load_from_string(fp32).graph.initializer
                       if len(init.dims) >= 2)
    assert fp32_weights == 4 * weights


def test_int8_graph_rewrites_are_exact_identities() -> None:
    qmodel = float_se_model(relu_spec(se=0.25))
    from compress.quantize import frozen_qparams

    private = copy.deepcopy(qmodel)
    with frozen_qparams(private):
        raw = export_onnx(private, torch.zeros(1, 3, 16, 16))
    rewritten, counts = int8_graph(raw)
    assert counts["int8_weights"] == 10  # SE's expand conv feeds the float gate: its weight is stored dequantized
    assert counts["float_weights"] == 1
    quantizers = [n for n in onnx.load_from_string(rewritten).graph.node if n.op_type == "QuantizeLinear"]
    assert len({n.input[0] for n in quantizers}) == len(quantizers)  # one Q per tensor (the skip shares the conv's)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    x = torch.cat(batches(1, seed=9)).numpy()
    outs = []
    for model_bytes in (raw, rewritten):
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outs.append(np.concatenate([session.run(None, {name: row[None]})[0] for row in x]))
    assert np.array_equal(outs[0], outs[1])
    check = check_qdq_export(qmodel, rewritten, torch.from_numpy(x))
    assert check.passed and check.top1_agreement == 1.0


@pytest.mark.parametrize("se", [0.0, 0.25])
def test_fold_false_keeps_bn_float_and_stays_faithful(se: float) -> None:
    model = trained_like(relu_spec(se))
    qmodel = calibrate(apply_policy(model, uniform_policy(model, 8), fold_batchnorm=False), batches(2))
    export_qdq(qmodel, (1, 3, 16, 16), check_inputs=torch.cat(batches(2, seed=7)))  # raises when not faithful
    assert dataclasses.is_dataclass(relu_spec(se))
