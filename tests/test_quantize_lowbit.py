"""TTQ weights and DoReFa activations: exact values and gradients on hand-sized tensors, the policy
settings and their JSON, QAT through the one train loop, the export refusal, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from compress.distill import DistillationLoss
from compress.quantize import ActivationQuantizer, QuantLinear, apply_policy, current_policy, prepare_qat, quant_layers
from compress.quantize_cost import policy_weight_bits
from compress.quantize_dorefa import dorefa_activation
from compress.quantize_export import export_qdq
from compress.quantize_policy import PolicyError, QuantPolicy, effective_bits, uniform_policy
from compress.quantize_ttq import initial_ttq_scales, ttq_weight
from nas.cli import app
from nas.rundir.model_files import save
from nas.training import DataSplits, TrainConfig
from nas.training.train import train
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model
from search_spaces.errors import UserError

# max|w| = 0.75, so delta = 0.05 * 0.75 = 0.0375: 0.015625 falls in the zero region
FOUR = torch.tensor([[0.5, -0.25, 0.015625, -0.75]])


def four_weight_layer() -> nn.Linear:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(FOUR)
    return layer


# ---- TTQ ------------------------------------------------------------------------------------------


def test_ttq_scales_start_at_the_mean_magnitude_beyond_the_threshold() -> None:
    # W_p: mean of {0.5}; W_n: mean of {0.25, 0.75}
    assert initial_ttq_scales(FOUR) == (0.5, 0.5)
    layer = QuantLinear.from_float(four_weight_layer(), "ttq", 8)
    assert (layer.ttq_positive.item(), layer.ttq_negative.item()) == (0.5, 0.5)
    assert layer.quantized_weight().tolist() == [[0.5, -0.5, 0.0, -0.5]]


def test_ttq_ternary_weights_use_the_learned_scales() -> None:
    layer = QuantLinear.from_float(four_weight_layer(), "ttq", 8)
    with torch.no_grad():
        layer.ttq_positive.fill_(1.5)
        layer.ttq_negative.fill_(0.75)
    assert layer.quantized_weight().tolist() == [[1.5, -0.75, 0.0, -0.75]]


def test_ttq_threshold_is_a_fraction_of_the_largest_weight() -> None:
    # t = 0.4: delta = 0.3, so 0.25 joins the zero region and W_n is the mean of {0.75} alone
    assert initial_ttq_scales(FOUR, 0.4) == (0.5, 0.75)
    weight = ttq_weight(FOUR, torch.tensor(1.0), torch.tensor(2.0), 0.4)
    assert weight.tolist() == [[1.0, 0.0, 0.0, -2.0]]


def test_ttq_gradients_follow_the_paper() -> None:
    latent = FOUR.clone().requires_grad_(True)
    positive, negative = torch.tensor(1.5, requires_grad=True), torch.tensor(0.75, requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # dL/dw_t
    (ttq_weight(latent, positive, negative) * upstream).sum().backward()
    assert float(positive.grad) == 1.0  # sum over I_p = {0}
    assert float(negative.grad) == -6.0  # w_t = -W_n on I_n = {1, 3}: -(2 + 4)
    # W_p * g on I_p, W_n * g on I_n, g in the zero region
    assert latent.grad.tolist() == [[1.5, 1.5, 3.0, 3.0]]


def test_ttq_costs_two_bits_per_weight() -> None:
    model = nn.Sequential(four_weight_layer())
    assert effective_bits("ttq") == 2
    assert policy_weight_bits(model, uniform_policy(model, "ttq")) == 4 * 2


def test_ttq_scales_are_parameters_only_while_the_layer_is_ttq() -> None:
    model = nn.Sequential(four_weight_layer())
    qmodel = apply_policy(model, uniform_policy(model, "ttq"))
    assert sorted(k for k in qmodel.state_dict() if "ttq" in k) == ["0.ttq_negative", "0.ttq_positive"]
    assert current_policy(qmodel) == uniform_policy(model, "ttq")
    back = apply_policy(qmodel, uniform_policy(model, 4, 8))
    assert not any("ttq" in k for k in back.state_dict())


# ---- DoReFa activations ---------------------------------------------------------------------------


def test_dorefa_clips_to_unit_range_and_rounds_to_k_bits() -> None:
    x = torch.tensor([-0.5, 0.0, 0.1, 0.4, 0.95, 1.0, 1.7], requires_grad=True)
    # 2 bits: 3 steps of 1/3; 3 * [0, 0, 0.1, 0.4, 0.95, 1, 1] = [0, 0, 0.3, 1.2, 2.85, 3, 3]
    y = dorefa_activation(x, 2)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0]) / 3)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # straight through inside [0, 1]
    assert float(dorefa_activation(torch.tensor(0.25), 4)) == pytest.approx(4 / 15)  # 15 * 0.25 = 3.75 -> 4


def test_dorefa_quantizer_needs_no_calibration() -> None:
    quantizer = ActivationQuantizer(2, scheme="dorefa").eval()
    assert quantizer(torch.tensor([0.4, 2.0])).tolist() == pytest.approx([1 / 3, 1.0])
    scale, zero_point = quantizer.qparams()
    assert (float(scale), int(zero_point)) == (pytest.approx(1 / 3), 0)
    assert not bool(quantizer.initialized)  # nothing was observed


# ---- policy ---------------------------------------------------------------------------------------


def two_layer_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_defaults_stay_out_of_the_json_so_old_files_read_the_same() -> None:
    model = two_layer_model()
    old = {"schema": "hwnas-compress-policy", "schema_version": 1, "kind": "quantize", "settings": {},
           "layers": {"0": {"weight_bits": 4, "activation_bits": 8}, "2": {"weight_bits": "ternary", "activation_bits": 8}}}
    policy = QuantPolicy.from_dict(old)
    assert policy.to_dict() == old
    assert (policy.ttq_threshold, dict(policy.activation_quantizer)) == (0.05, {})
    assert uniform_policy(model, "ttq").to_dict()["settings"] == {}


def test_ttq_and_dorefa_settings_round_trip() -> None:
    policy = QuantPolicy({"0": ("ttq", 8), "2": ("ttq", 4)}, ttq_threshold=0.1, activation_quantizer={"2": "dorefa"})
    data = json.loads(policy.to_json())
    assert data["settings"] == {"ttq_threshold": 0.1, "activation_quantizer": {"2": "dorefa"}}
    assert QuantPolicy.from_json(policy.to_json()) == policy
    assert policy.bits_string() == "wTTQa8 wTTQa4d"
    everywhere = QuantPolicy({"0": (4, 4), "2": (4, 4)}, activation_quantizer="dorefa")
    assert everywhere.settings() == {"activation_quantizer": "dorefa"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"activation_quantizer": "log"}, "settings.activation_quantizer='log' not in {linear, dorefa}"),
    ({"activation_quantizer": {"5": "dorefa"}}, "names ['5'], which the policy's layers do not"),
    ({"ttq_threshold": 0.9}, "settings.ttq_threshold=0.9 out of range; allowed: [0.0, 0.5]"),
    ({"ternary_threshold": 0.1}, "unknown setting(s) ['ternary_threshold']; allowed: ['activation_quantizer', 'ttq_threshold']"),
])
def test_bad_settings_name_the_field_and_the_allowed_values(settings: dict, message: str) -> None:
    data = {"schema": "hwnas-compress-policy", "schema_version": 1, "kind": "quantize", "settings": settings,
            "layers": {"0": {"weight_bits": "ttq", "activation_bits": 8}}}
    with pytest.raises(PolicyError) as error:
        QuantPolicy.from_dict(data)
    assert message in str(error.value)


def test_unknown_weight_scheme_lists_ttq() -> None:
    with pytest.raises(PolicyError, match=r"weight_bits='ttq2' not in \{2, 3, 4, 5, 6, 7, 8, 'binary', 'ternary', 'ttq'\}"):
        QuantPolicy({"0": ("ttq2", 8)})


def test_apply_policy_gives_dorefa_only_to_the_named_layers() -> None:
    model = two_layer_model()
    qmodel = apply_policy(model, QuantPolicy({"0": (8, 8), "2": ("ttq", 4)}, activation_quantizer={"2": "dorefa"}))
    layers = quant_layers(qmodel)
    assert (layers["0"].input_quant.scheme, layers["2"].input_quant.scheme) == ("linear", "dorefa")
    assert dict(current_policy(qmodel).activation_quantizer) == {"2": "dorefa"}


# ---- export refusal -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [
    QuantPolicy({"0": ("ttq", 8), "2": (8, 8)}),
    QuantPolicy({"0": (8, 8), "2": (8, 8)}, activation_quantizer={"2": "dorefa"}),
])
def test_int8_export_refuses_ttq_and_dorefa_with_a_user_error(policy: QuantPolicy) -> None:
    qmodel = prepare_qat(two_layer_model(), policy, calibration=[torch.randn(4, 4)]).eval()
    with pytest.raises(UserError, match="weight_bits='ttq' and activation_quantizer='dorefa' cannot be exported"):
        export_qdq(qmodel, (1, 4))


# ---- QAT through the one train loop ---------------------------------------------------------------


def tiny_data(n: int = 48) -> DataSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    split = TensorDataset(images, labels)
    return DataSplits(split, split, split, num_classes=10, in_channels=3, resolution=8, name="random")


def tiny_spec() -> ArchSpec:
    return ArchSpec(StemSpec(8), (BlockSpec(Op.MBCONV, 8, expand_ratio=2),), HeadSpec(conv_channels=16, dropout=0.0),
                    resolution=8, num_classes=10)


def test_qat_with_distillation_trains_ttq_scales_and_keeps_weights_ternary() -> None:
    torch.manual_seed(0)
    base = build_model(tiny_spec()).eval()
    data = tiny_data()
    names = [n for n, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    middle = {name: ("ttq", 4) for name in names[1:-1]}
    policy = QuantPolicy({names[0]: (8, 8), **middle, names[-1]: (8, 8)},
                         activation_quantizer={n: "dorefa" for n in middle if "depthwise" in n or "project" in n})
    qmodel = prepare_qat(base, policy, calibration=data.calibration_batches(0, images=16))
    ttq = {n: m for n, m in quant_layers(qmodel).items() if m.weight_bits == "ttq"}
    before = {n: (m.ttq_positive.item(), m.ttq_negative.item()) for n, m in ttq.items()}
    config = TrainConfig(epochs=1, batch_size=16, optimizer="adamw", lr=1e-2, device="cpu", max_batches_per_epoch=3)
    train(qmodel, data, config, teacher=base, distill_loss=DistillationLoss())
    for name, layer in ttq.items():
        assert (layer.ttq_positive.item(), layer.ttq_negative.item()) != before[name], name
        values = set(layer.quantized_weight().detach().flatten().tolist())
        assert values <= {layer.ttq_positive.item(), -layer.ttq_negative.item(), 0.0}, name


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_quantize_takes_a_ttq_dorefa_policy_file(tmp_path: Path) -> None:
    spec = tiny_spec()
    save(build_model(spec), spec, tmp_path / "model")
    names = [n for n, m in build_model(spec).named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    policy = QuantPolicy({name: ("ttq", 4) for name in names}, activation_quantizer={names[1]: "dorefa"})
    (tmp_path / "policy.json").write_text(policy.to_json())
    args = ["compress", "quantize", str(tmp_path / "model"), "--policy", str(tmp_path / "policy.json"),
            "--epochs", "0", "--calibration", "random", "--no-measure", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert QuantPolicy.from_json((tmp_path / "out" / "policy.json").read_text()) == policy
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["policy"].split().count("wTTQa4d") == 1  # the DoReFa layer; the others are linear
    assert metrics["weight_bits"] == policy_weight_bits(build_model(spec), policy)


def test_cli_refuses_to_export_an_all_8bit_dorefa_policy(tmp_path: Path) -> None:
    spec = tiny_spec()
    save(build_model(spec), spec, tmp_path / "model")
    all_8bit = uniform_policy(build_model(spec), 8, 8, activation_quantizer="dorefa")
    (tmp_path / "policy.json").write_text(all_8bit.to_json())
    args = ["compress", "quantize", str(tmp_path / "model"), "--policy", str(tmp_path / "policy.json"),
            "--epochs", "0", "--calibration", "random", "--no-measure", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot be exported" in result.output


# ---- the study's policy ---------------------------------------------------------------------------


def test_lowbit_study_puts_dorefa_only_where_the_input_is_non_negative() -> None:
    from bench.toolbox_lowbit import lowbit_policy, non_negative_inputs

    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    # the image (stem) and the residual sum (head conv) are signed; ReLU6 outputs and the pooled head are not
    found = non_negative_inputs(model, [torch.randn(4, 3, 8, 8)])
    assert found == {"blocks.0.expand.0", "blocks.0.depthwise.0", "blocks.0.project.0", "head.classifier"}
    policy = lowbit_policy(model, "ttq", 4, found)
    assert policy.bits_string() == "w8a8 wTTQa4d wTTQa4d wTTQa4d wTTQa4 w8a8"  # first and last layer stay 8/8
