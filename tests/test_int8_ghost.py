"""GhostNet and squeeze-excite on int8 kernels (issue #16): what ONNX Runtime's optimized graph of a
tiny ghost net / SE net holds, and that it computes what the fake-quantized model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from test_int8_graph import relu_spec, trained_like
from test_quantize import batches

from compress.quantize import apply_policy, calibrate, quantization_disabled
from compress.quantize_export import check_qdq_export, export_qdq
from compress.quantize_ghost import Int8GhostBottleneck, Int8GhostModule, SharedQuantizer
from compress.quantize_graph import add_int8_points, int8_point_quantizers
from compress.quantize_onnx import optimized_op_counts
from compress.quantize_policy import uniform_policy
from compress.quantize_se import Int8SqueezeExcite
from predictors.latency.backends import export_onnx
from search_spaces.spec import ArchSpec

SHAPE = (1, 3, 16, 16)


def ghost_spec(se: float = 0.0, width: int = 8, project_out: int | None = None) -> ArchSpec:
    """Stem; a stride-1 ghost bottleneck with an identity shortcut; a stride-2 one with a conv
    shortcut (depthwise + 1x1); head conv; classifier. 17 convs with SE, 13 without."""
    return ArchSpec.from_dict({
        "name": "ghost-tiny", "resolution": 16, "num_classes": 4, "in_channels": 3,
        "stem": {"out_channels": width, "kernel": 3, "stride": 2, "activation": "relu", "pool": False},
        "blocks": [
            {"op": "ghost", "out_channels": width, "stride": 1, "kernel": 3, "expand_ratio": 2.0, "se_ratio": se,
             "se_style": "mobilenetv3", "activation": "relu"},
            {"op": "ghost", "out_channels": project_out or 2 * width, "stride": 2, "kernel": 3, "expand_ratio": 3.0,
             "se_ratio": se, "se_style": "mobilenetv3", "activation": "relu"},
        ],
        "head": {"conv_channels": 4 * width, "activation": "relu", "dropout": 0.0},
    })


def quantized(spec: ArchSpec, int8_se: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = trained_like(spec)
    qmodel = apply_policy(model, uniform_policy(model, 8), int8_points=False)
    add_int8_points(qmodel, int8_se=int8_se)
    return model, calibrate(qmodel, batches(2)).eval()


def checked_counts(qmodel: torch.nn.Module) -> dict[str, int]:
    """ORT's op census of the int8 export, after the faithfulness check passed (export_qdq raises otherwise)."""
    onnx_model = export_qdq(qmodel, SHAPE, check_inputs=torch.cat(batches(2, seed=7)))
    check = check_qdq_export(qmodel, onnx_model, torch.cat(batches(2, seed=7)))
    assert check.passed and check.top1_agreement == 1.0
    return optimized_op_counts(onnx_model)


def test_ghost_modules_share_one_grid_and_switch_off_to_the_float_model() -> None:
    model, qmodel = quantized(ghost_spec())
    blocks = qmodel.blocks
    assert all(type(b) is Int8GhostBottleneck for b in blocks)
    assert all(type(getattr(b, key)) is Int8GhostModule for b in blocks for key in ("expand", "project"))
    # the cheap conv reads the primary half on the module's grid; the strided depthwise conv reads
    # the expand module's output; the conv shortcut reads x on the block's first conv's grid
    assert blocks[0].expand.cheap[0].input_quant.source is blocks[0].expand.output_quant
    assert blocks[1].depthwise[0].input_quant.source is blocks[1].expand.output_quant
    assert blocks[1].shortcut[0][0].input_quant.source is blocks[1].expand.primary[0].input_quant
    assert blocks[0].project.primary[0].input_quant.source is blocks[0].expand.output_quant  # no SE in between
    # 4 ghost grids, the shortcut's 1x1 output, head conv, classifier logits
    assert len(int8_point_quantizers(qmodel)) == 7
    x = torch.cat(batches(1, seed=3))
    with torch.no_grad(), quantization_disabled(qmodel):
        assert torch.allclose(qmodel(x), model(x), atol=1e-5)


def test_shared_quantizers_keep_the_state_dict_keys() -> None:
    _, qmodel = quantized(ghost_spec())
    plain = apply_policy(trained_like(ghost_spec()), uniform_policy(qmodel, 8), int8_points=False)
    added = set(qmodel.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(qmodel.state_dict())
    assert sorted({key.rsplit(".", 1)[0] for key in added}) == [
        "blocks.0.expand.output_quant", "blocks.0.project.output_quant", "blocks.1.expand.output_quant",
        "blocks.1.project.output_quant", "blocks.1.shortcut.1.2.quant", "head.classifier.output_quant",
        "head.conv.2.quant"]
    reloaded = copy.deepcopy(qmodel)
    reloaded.load_state_dict(qmodel.state_dict())
    shared = reloaded.blocks[0].expand.cheap[0].input_quant
    assert isinstance(shared, SharedQuantizer) and shared.source is reloaded.blocks[0].expand.output_quant


def test_ghost_net_runs_every_conv_on_int8_kernels() -> None:
    """13 convs QLinearConv, both ghost concats of each block QLinearConcat, both residual adds
    QLinearAdd, the head's pool QLinearGlobalAveragePool; no float op, no Slice (the concat is the
    module's width); the only Q/DQ are the input's Q and the logits' DQ."""
    _, qmodel = quantized(ghost_spec())
    counts = checked_counts(qmodel)
    assert counts["QLinearConv"] == 13 and counts["QLinearConcat"] == 4 and counts["QLinearAdd"] == 2
    assert counts["QGemm"] == 1 and counts["QLinearGlobalAveragePool"] == 1
    assert not {"Conv", "FusedConv", "Concat", "Add", "Slice", "Gemm", "ReduceMean"} & set(counts)
    assert counts["QuantizeLinear"] == 1 and counts["DequantizeLinear"] == 1


def test_ghost_net_with_se_keeps_only_the_hard_gate_float() -> None:
    _, qmodel = quantized(ghost_spec(se=0.25))
    counts = checked_counts(qmodel)
    assert counts["QLinearConv"] == 17 and counts["QLinearConcat"] == 4 and counts["QLinearAdd"] == 2
    assert counts["QLinearMul"] == 2 and counts["HardSigmoid"] == 2
    assert counts["QLinearGlobalAveragePool"] == 3  # two SE pools and the head's
    assert not {"Conv", "FusedConv", "Concat", "Add", "Mul", "GlobalAveragePool", "ReduceMean"} & set(counts)


def test_odd_width_ghost_module_slices_on_its_grid() -> None:
    # 9 channels: the halves are 5 + 5 and the slice drops one; the export stays faithful
    _, qmodel = quantized(ghost_spec(project_out=9))
    counts = checked_counts(qmodel)
    assert counts["QLinearConv"] == 13 and counts["QLinearConcat"] == 4 and counts["Slice"] == 1


def test_int8_ghost_net_file_is_under_035_of_fp32() -> None:
    # wide enough (397k weights) that weights, not the Q/DQ nodes and per-channel scales, dominate
    # the file: at width 32 (29k weights) the int8 file is 0.70x fp32; GhostNet 1.0 at 224 is 0.27x
    model, qmodel = quantized(ghost_spec(se=0.25, width=128))
    fp32 = export_onnx(copy.deepcopy(model), torch.zeros(SHAPE))
    int8 = export_qdq(qmodel, SHAPE)
    assert len(int8) < 0.35 * len(fp32)


@pytest.mark.parametrize(("style", "gate_op", "gate_count"), [("efficientnet", "QLinearSigmoid", 1),
                                                              ("mobilenetv3", "HardSigmoid", 1)])
def test_se_gate_conv_and_multiply_run_on_int8_kernels(style: str, gate_op: str, gate_count: int) -> None:
    spec = relu_spec(se=0.25)
    spec = ArchSpec.from_dict({**spec.to_dict(), "blocks": [spec.blocks[0].to_dict(),
                                                          {**spec.blocks[1].to_dict(), "se_style": style}]})
    _, qmodel = quantized(spec)
    assert type(qmodel.blocks[1].se) is Int8SqueezeExcite
    counts = checked_counts(qmodel)
    # all 10 convs (SE's two included) int8, SE's pool too; a sigmoid gate is QLinearSigmoid, a hard
    # one stays float between DQ and Q
    assert counts["QLinearConv"] == 10 and counts["QLinearMul"] == 1 and counts[gate_op] == gate_count
    assert counts["QLinearGlobalAveragePool"] == 2  # SE's and the head's
    assert not {"Conv", "FusedConv", "Mul", "GlobalAveragePool"} & set(counts)


def test_float_se_keeps_the_gate_conv_and_multiply_float() -> None:
    _, qmodel = quantized(relu_spec(se=0.25), int8_se=False)
    assert type(qmodel.blocks[1].se).__name__ == "SqueezeExcite"
    counts = checked_counts(qmodel)
    assert counts["QLinearConv"] == 9 and counts["Mul"] == 1 and "QLinearMul" not in counts


def test_a_layer_set_to_other_bits_leaves_the_shared_grid() -> None:
    _, qmodel = quantized(ghost_spec())
    cheap = qmodel.blocks[0].expand.cheap[0]
    assert cheap.input_quant.shared()
    cheap.set_bits(8, 4)  # what apply_policy does to an already quantized model
    own = cheap.input_quant
    assert not own.shared()
    scale, _ = own.qparams()  # its own calibrated range on the 4-bit grid, not the module's 8-bit one
    assert float(scale) == pytest.approx(float(own.max_val.clamp(min=0) - own.min_val.clamp(max=0)) / 15)

