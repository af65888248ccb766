"""Mixed-precision quantization: quantizers, policy data, resource models, QDQ export, QAT (HAQ's
policy search: test_haq.py)."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from conftest import u8s8_saturates
from torch import nn

from compress.distill import DistillationLoss
from compress.quantize import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    apply_policy,
    calibrate,
    conv_bn_pairs,
    fake_quant_weight,
    prepare_qat,
    quant_layers,
    quantization_disabled,
    weight_scale,
)
from compress.quantize_cost import bitfusion_cost, layer_infos, policy_weight_bits
from compress.quantize_export import QDQ_TOLERANCE, check_qdq_export, export_qdq
from compress.quantize_policy import (
    PolicyError,
    QuantPolicy,
    quantizable_layers,
    uniform_policy,
)
from predictors.cost import count
from predictors.latency.backends import export_onnx
from search_spaces.build import build_model
from search_spaces.spec import (
    Activation,
    ArchSpec,
    BlockSpec,
    HeadSpec,
    Op,
    SEStyle,
    StemSpec,
)


def tiny_spec(resolution: int = 16, num_classes: int = 4) -> ArchSpec:
    """Zoo-like in miniature: MBConv with expansion, a residual, SE (MobileNetV3 style), hswish."""
    blocks = (
        BlockSpec(Op.MBCONV, 16, stride=2, kernel=3, expand_ratio=3, activation=Activation.RELU6),
        BlockSpec(Op.MBCONV, 16, stride=1, kernel=5, expand_ratio=3, se_ratio=0.25,
                  se_style=SEStyle.MOBILENETV3, activation=Activation.HSWISH),
    )
    return ArchSpec(StemSpec(8, activation=Activation.RELU6), blocks, HeadSpec(32, activation=Activation.HSWISH,
                    dropout=0.0), resolution=resolution, num_classes=num_classes)


def tiny_model(resolution: int = 16, seed: int = 0) -> nn.Module:
    """A tiny model with non-trivial BN statistics (so folding is exercised) and larger classifier
    weights than the N(0, 0.01) initialisation (so logits are not all near zero)."""
    torch.manual_seed(seed)
    model = build_model(tiny_spec(resolution))
    nn.init.normal_(model.head.classifier.weight, 0, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, resolution, resolution))
    return model.eval()


def batches(n: int, resolution: int = 16, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, resolution, resolution, generator=generator) for _ in range(n)]


# ---- quantizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_grid_values_come_back_unchanged(bits: int) -> None:
    levels = 2 ** (bits - 1) - 1
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(-levels, levels + 1, (4, 3, 3, 3), generator=generator).float()
    codes[:, 0, 0, 0] = levels  # each channel reaches the top code, so max|w| / levels is its step
    steps = torch.tensor([2.0**-3, 2.0**-5, 2.0**-7, 1.0]).view(4, 1, 1, 1)  # powers of 2: exact in float
    weight = codes * steps
    assert torch.equal(weight_scale(weight, bits), steps.flatten())
    assert torch.equal(fake_quant_weight(weight, bits), weight)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_grid_values_come_back_unchanged(bits: int) -> None:
    top, step, zero_point = 2**bits - 1, 2.0**-4, 2 ** (bits - 1) - 1
    quantizer = ActivationQuantizer(bits).eval()
    quantizer.min_val.fill_(-zero_point * step)
    quantizer.max_val.fill_((top - zero_point) * step)
    quantizer.initialized.fill_(True)
    scale, zp = quantizer.qparams()
    assert (float(scale), int(zp)) == (step, zero_point)
    x = (torch.arange(top + 1).float() - zero_point) * step
    assert torch.equal(quantizer(x), x)


def test_quantization_error_shrinks_with_bits() -> None:
    weight = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    errors = [float((fake_quant_weight(weight, b) - weight).abs().mean()) for b in range(2, 9)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # rounding to the nearest grid point: at most half a step per element (clipping never happens
    # for weights: the scale comes from max|w|); 1e-6 relative slack for float division
    step = weight_scale(weight, 8).view(-1, 1, 1, 1)
    assert bool(((fake_quant_weight(weight, 8) - weight).abs() <= step / 2 * (1 + 1e-6)).all())

    x = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    act_errors = []
    for bits in range(2, 9):
        quantizer = ActivationQuantizer(bits)
        quantizer.observe(x)
        act_errors.append(float((quantizer.eval()(x) - x).abs().mean()))
    assert all(a > b for a, b in itertools.pairwise(act_errors)), act_errors


def test_straight_through_gradients_are_exact() -> None:
    quantizer = ActivationQuantizer(4).eval()
    quantizer.min_val.fill_(-1.0)
    quantizer.max_val.fill_(2.0)
    quantizer.initialized.fill_(True)
    x = torch.tensor([-3.0, -1.5, -0.9, 0.0, 0.7, 1.9, 2.6, 5.0], requires_grad=True)
    quantizer(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    for bits in (2, 8, "binary", "ternary"):
        weight = torch.randn(4, 3, 3, 3, requires_grad=True)
        fake_quant_weight(weight, bits).sum().backward()
        assert torch.equal(weight.grad, torch.ones_like(weight)), bits


def test_binary_and_ternary_weights_take_two_and_three_values_per_channel() -> None:
    weight = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(2))
    binary, ternary = fake_quant_weight(weight, "binary"), fake_quant_weight(weight, "ternary")
    for channel in range(8):
        assert len(binary[channel].unique()) == 2
        assert torch.allclose(binary[channel].abs(), weight[channel].abs().mean().expand_as(weight[channel]))
        values = ternary[channel].unique()
        assert len(values) == 3 and values[1] == 0 and values[0] == -values[2]


# ---- policy -------------------------------------------------------------------------------------


def test_policy_json_round_trip_and_uniform_policy() -> None:
    model = tiny_model()
    names = list(quantizable_layers(model))
    policy = QuantPolicy({names[0]: (8, 8), names[1]: ("binary", 4), names[2]: ("ternary", 2), names[-1]: (3, 6)})
    text = policy.to_json()
    assert json.loads(text)["kind"] == "quantize"
    assert QuantPolicy.from_json(text) == policy
    uniform = uniform_policy(model, 4)
    assert set(uniform.layers) == set(names) and {tuple(b) for b in uniform.layers.values()} == {(4, 4)}
    assert QuantPolicy.from_dict(uniform.to_dict()) == uniform


def test_bad_policies_name_the_layer_and_the_allowed_values() -> None:
    model = tiny_model()
    with pytest.raises(PolicyError, match=r"unknown layer 'blocks\.9\.expand\.0'.*stem\.0\.0"):
        apply_policy(model, QuantPolicy({"blocks.9.expand.0": (8, 8)}))
    with pytest.raises(PolicyError, match=r"'stem\.0\.1' is a BatchNorm2d"):
        apply_policy(model, QuantPolicy({"stem.0.1": (8, 8)}))
    with pytest.raises(PolicyError, match=r"layer 'stem\.0\.0': weight_bits=9 not in \{2, 3, 4, 5, 6, 7, 8, 'binary', 'ternary', 'ttq'\}"):
        QuantPolicy({"stem.0.0": (9, 8)})
    with pytest.raises(PolicyError, match=r"layer 'stem\.0\.0': activation_bits='ternary' not in \{2, 3, 4, 5, 6, 7, 8\}"):
        QuantPolicy({"stem.0.0": (8, "ternary")})
    with pytest.raises(PolicyError, match=r"spelled 'binary'"):
        QuantPolicy.from_dict({**uniform_policy(model, 8).to_dict(), "layers": {"stem.0.0": {"weight_bits": 1,
                                                                                           "activation_bits": 8}}})


def test_apply_policy_copies_folds_and_keeps_names() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = apply_policy(model, uniform_policy(model, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    assert set(quant_layers(qmodel)) == set(quantizable_layers(model))
    assert isinstance(qmodel.get_submodule("blocks.0.expand.0"), QuantConv2d)
    assert isinstance(qmodel.get_submodule("head.classifier"), QuantLinear)
    assert conv_bn_pairs(qmodel) == []  # every BN folded away
    with pytest.raises(RuntimeError, match="calibrate"):
        qmodel(batches(1)[0])
    calibrate(qmodel, batches(2))
    x = batches(1, seed=5)[0]
    with torch.no_grad():
        error = (qmodel(x) - model(x)).abs().max()
    # 8 bits: close to float, but quantized (the int8 points between layers, compress.quantize_graph,
    # add their own steps: 6.5% of this random model's largest logit, 0.1, against 4% without them)
    assert 0 < error < 0.1 * model(x).abs().max()
    layer = qmodel.get_submodule("blocks.0.expand.0")  # folded BN gave it a bias: int32 at s_in * s_w
    _, bias = layer.quantized_parameters()
    codes = bias / (layer.input_quant.qparams()[0] * weight_scale(layer.weight, 8, layer.reduce_range))
    assert torch.allclose(codes, codes.round(), atol=1e-3) and not torch.equal(bias, layer.bias)


# ---- resource models ----------------------------------------------------------------------------


def test_weight_bits_of_a_uniform_4_bit_policy_is_exact() -> None:
    model = tiny_model()
    layers = quantizable_layers(model)
    with_bn = {conv for conv, _ in conv_bn_pairs(model)}
    weights = sum(m.weight.numel() for m in layers.values())
    biases = sum(m.bias.numel() if m.bias is not None else m.out_channels for n, m in layers.items()
                 if m.bias is not None or n in with_bn)
    # by hand: stem 8; block 0 (8 -> mid 24 -> 16) 24 + 24 + 16; block 1 (16 -> 48 -> 16, SE squeeze
    # make_divisible(48 / 4, 8) = 16) 48 + 48 + 16 + 48 + 16; head conv 32, classifier 4
    assert biases == 8 + (24 + 24 + 16) + (48 + 48 + 16 + 48 + 16) + 32 + 4
    expected = 4 * weights + 32 * biases
    assert policy_weight_bits(model, uniform_policy(model, 4)) == expected
    qmodel = apply_policy(model, uniform_policy(model, 4))  # folded or not, the same count
    assert policy_weight_bits(qmodel) == expected
    assert policy_weight_bits(model, QuantPolicy({})) == 32 * weights + 32 * biases


def test_layer_macs_agree_with_predictors_cost() -> None:
    model = tiny_model()
    infos = layer_infos(model, (1, 3, 16, 16))
    assert sum(info.macs for info in infos) == count(model).macs
    assert [info.name for info in infos][:3] == ["stem.0.0", "blocks.0.expand.0", "blocks.0.depthwise.0"]
    assert infos[2].depthwise and not infos[1].depthwise


def test_bitfusion_cost_decreases_with_bits() -> None:
    model = tiny_model()
    infos = layer_infos(model, (1, 3, 16, 16))
    uniform = [bitfusion_cost(infos, uniform_policy(model, b)).cycles for b in range(8, 1, -1)]
    assert all(a > b for a, b in itertools.pairwise(uniform)), uniform
    weights_only = [bitfusion_cost(infos, uniform_policy(model, b, 8)).cycles for b in range(8, 1, -1)]
    assert all(a > b for a, b in itertools.pairwise(weights_only)), weights_only
    report = bitfusion_cost(infos, uniform_policy(model, 8))
    assert report.cycles == pytest.approx(report.compute_cycles + report.memory_cycles)
    assert sum(report.per_layer.values()) == pytest.approx(report.cycles)


# ---- ONNX QDQ export ----------------------------------------------------------------------------


@pytest.mark.parametrize("fold", [True, False])
def test_int8_qdq_export_matches_fake_quant_model(fold: bool) -> None:
    model = tiny_model()
    qmodel = calibrate(apply_policy(model, uniform_policy(model, 8), fold_batchnorm=fold), batches(2))
    check_inputs = torch.cat(batches(2, seed=7))
    onnx_bytes = export_qdq(qmodel, (1, 3, 16, 16), check_inputs=check_inputs)  # raises when out of tolerance
    graph = onnx.load_from_string(onnx_bytes).graph
    ops = [node.op_type for node in graph.node]
    n_layers = len(quant_layers(qmodel))
    initializers = {init.name: init for init in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in initializers]
    assert ops.count("DequantizeLinear") > ops.count("QuantizeLinear")  # weights: int8 -> DQ only, no Q
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant"})
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[1] in constants
                   and constants[n.input[1]].ndim == 1 and n.input[0] in initializers]
    # one per-channel (axis 0) weight DQ per layer ORT runs on int8 kernels, scales constant; layers
    # followed by a float op (hard-swish, SE's gate) hold their dequantized weights (compress.quantize_onnx)
    dequantized = [name for name in initializers if name.endswith("_dequantized")]
    assert len(per_channel) + len(dequantized) == n_layers and per_channel
    # each float-weight layer reads its input through its own per-channel (axis 1) DQ, so ORT keeps
    # its weights as they are (compress.quantize_onnx, step 4)
    shields = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith("_float_input")]
    assert len(shields) == len(dequantized)
    assert all(next(a.i for a in n.attribute if a.name == "axis") == 0 for n in per_channel)
    assert all(constants[n.input[0]].dtype == np.int8 and n.input[0] in initializers for n in per_channel)
    check = check_qdq_export(qmodel, onnx_bytes, check_inputs)
    assert check.passed and check.relative <= QDQ_TOLERANCE and check.top1_agreement == 1.0
    # measured: float-level (<= 1e-6) on this narrow model with BN folded; unfolded, the convs feeding
    # a float BN hold float weights, ORT folds the BN into them, and float rounding flips a few codes
    # downstream: 4.1e-3 = 0.25x the quantization error, within tolerance (checked above)
    assert check.max_abs_diff < (1e-4 if fold else 0.5 * check.quantization_error)
    assert check.quantization_error > 1e-3  # while 8 bits do move the outputs


def test_int8_layers_use_7_bit_weight_codes_in_an_int8_container() -> None:
    model = tiny_model()
    qmodel = calibrate(apply_policy(model, uniform_policy(model, 8)), batches(1))
    for layer in quant_layers(qmodel).values():
        codes = layer.quantized_weight().detach() / weight_scale(layer.weight, 8, True).view(-1, *[1] * (layer.weight.dim() - 1))
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert int(codes.abs().round().max()) == 63  # each channel's largest weight is +-63: no pair sum > 2^15
    full = apply_policy(model, uniform_policy(model, 8), reduce_range=False)
    assert not any(layer.reduce_range for layer in quant_layers(full).values())
    assert fake_quant_weight(model.stem[0][0].weight, 4, True).equal(fake_quant_weight(model.stem[0][0].weight, 4))


@pytest.mark.skipif(not u8s8_saturates(), reason="only x86 CPUs without VNNI saturate")
def test_full_range_int8_weights_are_not_exact_on_this_cpu() -> None:
    """The cause behind reduce_range, shown: the same full-range export is exact on ORT's float
    path (optimizations off: DQ then float Conv) and off by more than the tolerance on its int8
    kernels (QLinearConv), which add u8*s8 pairs in saturating int16 here."""
    import onnxruntime as ort

    model = tiny_model()
    qmodel = calibrate(apply_policy(model, uniform_policy(model, 8), reduce_range=False, int8_points=False),
                       batches(2))
    check_inputs = torch.cat(batches(2, seed=7))
    onnx_bytes = export_qdq(qmodel, (1, 3, 16, 16))
    assert not check_qdq_export(qmodel, onnx_bytes, check_inputs).passed
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: row[None].numpy()})[0] for row in check_inputs])
    with torch.no_grad():
        want = qmodel.eval()(check_inputs).numpy()
    assert np.abs(got - want).max() < 1e-5


def test_an_export_that_ignores_quantization_fails_the_check() -> None:
    model = tiny_model()
    qmodel = calibrate(apply_policy(model, uniform_policy(model, 8)), batches(2))
    check_inputs = torch.cat(batches(1, seed=7))
    with quantization_disabled(qmodel):
        float_onnx = export_onnx(copy.deepcopy(qmodel).eval(), check_inputs[:1])
    check = check_qdq_export(qmodel, float_onnx, check_inputs)
    # ORT's float model reproduces the unquantized outputs: it is off by the whole quantization error
    assert check.relative == pytest.approx(1.0, abs=1e-3) and not check.passed


def test_export_refuses_low_bit_policies() -> None:
    model = tiny_model()
    policy = uniform_policy(model, 8)
    mixed = QuantPolicy({**policy.layers, "stem.0.0": (4, 8)})
    qmodel = calibrate(apply_policy(model, mixed), batches(1))
    with pytest.raises(ValueError, match=r"stem\.0\.0 \(w4a8\)"):
        export_qdq(qmodel, (1, 3, 16, 16))


# ---- QAT with distillation ----------------------------------------------------------------------


def test_qat_with_distillation_runs_one_epoch() -> None:
    from nas.training.data import load_dataset
    from nas.training.train import TrainConfig, train

    data = load_dataset("synthetic", 8, limit=128)
    torch.manual_seed(0)
    teacher = build_model(tiny_spec(resolution=8, num_classes=data.num_classes)).eval()
    qmodel = prepare_qat(teacher, uniform_policy(teacher, 4), calibration=[data.train.tensors[0][:32]])
    weight_before = qmodel.get_submodule("blocks.0.expand.0").weight.detach().clone()
    range_before = float(qmodel.get_submodule("blocks.0.expand.0").input_quant.max_val)
    report = train(qmodel, data, TrainConfig(epochs=1, batch_size=32, device="cpu"), teacher=teacher,
                   distill_loss=DistillationLoss(temperature=4.0, alpha=0.9))
    assert report.status == "ok" and report.epochs_run == 1 and np.isfinite(report.train_loss[0])
    layer = qmodel.get_submodule("blocks.0.expand.0")
    assert not torch.equal(layer.weight, weight_before)  # STE gradients reached the float weights
    assert float(layer.input_quant.max_val) != range_before  # the EMA observer tracked training
    assert 0.0 <= report.val_accuracy <= 1.0
