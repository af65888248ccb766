"""`predictors.cost`: MACs of conv and linear layers only, exact on hand-computed models, equal to
torch's own FlopCounterMode (which reports 2 FLOPs per MAC), per layer and without side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from predictors import Cost, LayerCost, count, layer_macs, layer_params, macs_of_spec, params_of_spec
from search_spaces import (
    Activation,
    ArchSpec,
    BlockSpec,
    HeadSpec,
    Op,
    SEStyle,
    SpecError,
    StemSpec,
    build_model,
    layer_shapes,
    zoo,
)


class Tiny(nn.Module):
    """3x3 conv 3->8 (stride 1, no bias) + BN + ReLU at 8x8, global mean, linear 8->4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(self.conv(x))).mean((2, 3)))


class NotMacs(nn.Module):
    """One 1x1 conv among ops fvcore counts by default (batch norm, adaptive pooling, upsampling)
    and element-wise ones: only the conv is multiply-adds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y = y * torch.sigmoid(y) + F.hardswish(y)
        y = F.interpolate(self.pool(y), scale_factor=2.0, mode="bilinear")
        return self.norm(y).mean((2, 3))


def test_tiny_model_by_hand() -> None:
    cost = count(Tiny(), 8)
    conv_macs = 8 * 8 * 8 * 3 * 3 * 3  # output pixels x output channels x (input channels x 3 x 3)
    linear_macs = 8 * 4
    assert cost.macs == conv_macs + linear_macs == 13_856
    assert cost.params == 8 * 3 * 9 + 2 * 8 + 8 * 4 + 4 == 268
    assert cost.per_layer == (
        LayerCost("conv", 216, 13_824),
        LayerCost("bn", 16, 0),
        LayerCost("act", 0, 0),
        LayerCost("fc", 36, 32),
    )


def test_stride_and_groups_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False))
    # 9x9 input, stride 2 -> 5x5; depthwise: each output channel sees one input channel
    assert count(model, 9, in_channels=8).macs == 5 * 5 * 8 * 1 * 25


def test_batch_norm_and_element_wise_ops_are_not_macs() -> None:
    cost = count(NotMacs(), 6, in_channels=4)
    assert cost.macs == 6 * 6 * 4 * 4
    # fvcore's own defaults would count batch norm, group norm, pooling and upsampling too
    from fvcore.nn import FlopCountAnalysis

    default = FlopCountAnalysis(NotMacs().eval(), torch.zeros(1, 4, 6, 6))
    default.unsupported_ops_warnings(False)
    assert default.total() > cost.macs


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "ghostnet_1_0", "shufflenet_v2_x1_0", "efficientnet_b0"])
def test_agrees_with_flop_counter_mode(name: str) -> None:
    # FlopCounterMode counts aten.convolution (SE's 1x1 convs on the pooled map included) and
    # aten.addmm (linear layers) at 2 FLOPs per MAC, and nothing for the mean, activations,
    # gating or residual adds: exactly the ops this counter keeps, so FLOPs == 2 x MACs.
    spec = zoo.get(name, resolution=64)
    model = build_model(spec).eval()
    with FlopCounterMode(display=False) as flop_counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    ops = {str(op) for op in flop_counter.get_flop_counts()["Global"]}
    assert ops <= {"aten.convolution", "aten.addmm"}
    assert flop_counter.get_total_flops() == 2 * count(model).macs


def test_spec_layers_sum_to_the_totals() -> None:
    spec = zoo.get("mobilenet_v3_small", resolution=96)
    cost = count(spec)
    assert [layer.name for layer in cost.per_layer] == [layer.name for layer in layer_shapes(spec)]
    assert cost.per_layer[0].name == "stem" and cost.per_layer[-1].name == "head"
    assert sum(layer.macs for layer in cost.per_layer) == cost.macs
    assert sum(layer.params for layer in cost.per_layer) == cost.params
    # the head: 1x1 conv 96->576 at 3x3, linear 576->1024, linear 1024->1000
    assert cost.layer("head").macs == 3 * 3 * 96 * 576 + 576 * 1024 + 1024 * 1000
    with pytest.raises(KeyError, match="no layer 'blocks.99'"):
        cost.layer("blocks.99")


def test_spec_network_and_resolution_override_agree() -> None:
    spec = zoo.get("mnasnet_a1", resolution=64)
    by_spec = count(spec)
    assert count(build_model(spec)) == by_spec
    assert count(zoo.get("mnasnet_a1"), resolution=64) == by_spec
    assert count(spec) == by_spec  # deterministic
    assert by_spec.to_dict()["macs"] == by_spec.macs


def test_training_mode_and_statistics_are_left_alone() -> None:
    model = build_model(zoo.get("mobilenet_v3_small", resolution=32)).train()
    model.blocks[2].eval()  # a mixed state must come back as it was, not as all-train
    modes = [module.training for module in model.modules()]
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    count(model)
    assert [module.training for module in model.modules()] == modes
    assert all(torch.equal(buffers[name], buffer) for name, buffer in model.named_buffers())


def test_precise_errors() -> None:
    with pytest.raises(SpecError, match=r"resolution=4 must be >= 8"):
        count(zoo.get("mobilenet_v2"), resolution=4)
    with pytest.raises(SpecError, match=r"resolution=64.0 must be an integer"):
        macs_of_spec(zoo.get("mobilenet_v2"), resolution=64.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resolution is required"):
        count(Tiny())
    with pytest.raises(ValueError, match="resolution=0 must be a positive integer"):
        count(Tiny(), 0)
    with pytest.raises(TypeError, match="got str"):
        count("mobilenet_v2")  # type: ignore[arg-type]


def _every_op_spec(resolution: int) -> ArchSpec:
    """All four ops in their less common forms: stride-1 width changes (projection shortcuts),
    SE in every style, a widened shuffle unit, odd feature-map sizes, a hidden head layer."""
    block = BlockSpec
    blocks = (
        block(Op.DSCONV, 24, stride=2, kernel=5, activation=Activation.RELU6),
        block(Op.MBCONV, 32, kernel=7, expand_ratio=4, se_ratio=0.25, se_style=SEStyle.MOBILENETV3),
        block(Op.MBCONV, 32, stride=2, expand_ratio=1, se_ratio=0.5, activation=Activation.SWISH),
        block(Op.GHOST, 40, kernel=5, mid_channels=60, se_ratio=0.25, se_style=SEStyle.GHOSTNET),
        block(Op.GHOST, 40, stride=2, mid_channels=81),
        block(Op.SHUFFLE, 64, stride=2, expand_ratio=1.5, se_ratio=0.25),
        block(Op.SHUFFLE, 64, kernel=7, activation=Activation.HSWISH),
    )
    return ArchSpec(StemSpec(16, kernel=5, pool=True), blocks, HeadSpec(128, 256), resolution=resolution, num_classes=7)


def _nb201_blocks_spec(resolution: int) -> ArchSpec:
    """NAS-Bench-201's block kinds in every form: a cell with each edge op (and a `none`), the
    resblock strided, widening at stride 1 (1x1 ReLU-conv-BN shortcut) and as identity; a linear
    stem and a pre-activation head."""
    cell = ("nor_conv_3x3", "nor_conv_1x1", "skip_connect", "avg_pool_3x3", "none", "nor_conv_3x3")
    blocks = (
        BlockSpec(Op.CELL, 8, edges=cell),
        BlockSpec(Op.RESBLOCK, 16, stride=2),
        BlockSpec(Op.RESBLOCK, 24, kernel=5),
        BlockSpec(Op.RESBLOCK, 24),
        BlockSpec(Op.CELL, 24, edges=cell[::-1]),
    )
    return ArchSpec(StemSpec(8, stride=1, activation="none"), blocks,
                    HeadSpec(None, dropout=0.0, preact=True), resolution=resolution, num_classes=7)


@pytest.mark.parametrize(("build", "resolution"),
                         [(_every_op_spec, 33), (_every_op_spec, 50), (_nb201_blocks_spec, 16)])
def test_closed_form_equals_fvcore_for_every_op(build, resolution: int) -> None:
    spec = build(resolution)
    cost = count(spec)
    assert macs_of_spec(spec) == cost.macs
    assert params_of_spec(spec) == cost.params
    for layer in layer_shapes(spec):
        assert layer_macs(layer) == cost.layer(layer.name).macs, layer.name
        assert layer_params(layer) == cost.layer(layer.name).params, layer.name


def test_bias_adds_are_counted_only_when_asked() -> None:
    spec = _nb201_blocks_spec(16)
    # the one biased layer is the classifier: one add per class
    assert macs_of_spec(spec, with_bias=True) == macs_of_spec(spec) + 7
    # SE's two 1x1 convs have biases too: squeeze + mid adds on their 1x1 maps
    se = ArchSpec(StemSpec(16), (BlockSpec(Op.MBCONV, 16, expand_ratio=4, se_ratio=0.25),), HeadSpec(None),
                  resolution=32, num_classes=10)
    assert macs_of_spec(se, with_bias=True) - macs_of_spec(se) == (4 + 64) + 10


def test_cost_is_frozen() -> None:
    cost = Cost(params=1, macs=2, per_layer=(LayerCost("stem", 1, 2),))
    with pytest.raises(AttributeError):
        cost.macs = 3  # type: ignore[misc]
