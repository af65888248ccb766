"""Building blocks as small modules, one class per `Op`, looked up in `BLOCKS` by op name.

Every block class takes `(in_channels, spec: BlockSpec)`. Layouts follow the papers and, where it
ships the model, torchvision's implementation, so parameter counts match exactly:
MobileNetV2/MnasNet/EfficientNet/MobileNetV3 for `MBConv`, ShuffleNetV2 for `ShuffleUnit`,
GhostNet for `GhostBottleneck`, MobileNetV1 for `DSConv`, NAS-Bench-201 (Dong & Yang, ICLR 2020;
its reference code, `xautodl.models.cell_infers` / `cell_operations`) for `Cell` and `ResBlock`,
FBNet (HW-NAS-Bench's `ConvBlock` and
`Skip`) for `IRFBlock` and `PointwiseConv`, ShuffleNet V1 (the authors' megvii reference) for
`ShuffleV1Unit`, SqueezeNet (torchvision's) for `Fire`. `BlockSpec.groups` > 1 makes an MBConv's two 1x1 convs grouped, with a channel
shuffle after the first (FBNet's `_g2` ops).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from search_spaces.lowrank_layers import apply_ranks
from search_spaces.registry import Registry
from search_spaces.spec import CELL_EDGES, Activation, BlockSpec, Op, SEStyle

BLOCKS: Registry[type[nn.Module]] = Registry("block")


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round to the nearest multiple of `divisor`, never going more than 10% below `value`
    (the rule of the MobileNet papers' reference code)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def make_activation(activation: Activation | None) -> nn.Module:
    if activation is None:
        return nn.Identity()
    return {
        Activation.RELU: nn.ReLU,
        Activation.RELU6: nn.ReLU6,
        Activation.HSWISH: nn.Hardswish,
        Activation.SWISH: nn.SiLU,
        Activation.NONE: nn.Identity,
    }[activation]()


class ConvBNAct(nn.Sequential):
    """Conv (no bias, 'same' padding for odd kernels) + BatchNorm + optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: Activation | None = Activation.RELU,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            make_activation(activation),
        )
        self.out_channels = out_channels


def se_squeeze_channels(style: SEStyle, ratio: float, block_in: int, mid: int) -> int:
    """Bottleneck width of squeeze-excite, with each paper's base and rounding."""
    if style is SEStyle.EFFICIENTNET:
        return max(1, int(block_in * ratio))
    if style is SEStyle.MOBILENETV3:
        return make_divisible(mid * ratio, 8)
    return make_divisible(mid * ratio, 4)


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> gate, rescaling channels."""

    def __init__(self, channels: int, squeeze: int, inner: Activation, hard_gate: bool) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = make_activation(inner)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid() if hard_gate else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(scale))))

    @classmethod
    def for_block(cls, spec: BlockSpec, block_in: int, mid: int) -> nn.Module:
        if not spec.se_ratio:
            return nn.Identity()
        squeeze = se_squeeze_channels(spec.se_style, spec.se_ratio, block_in, mid)
        if spec.se_style is SEStyle.EFFICIENTNET:
            return cls(mid, squeeze, spec.activation, hard_gate=False)
        return cls(mid, squeeze, Activation.RELU, hard_gate=True)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


@BLOCKS.register(Op.MBCONV.value)
class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped when mid == in), depthwise kxk, SE, linear 1x1 project.
    With `groups` > 1 both 1x1 convs are grouped and a channel shuffle follows the expand."""

    always_expand = False

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        mid = spec.mid(in_channels)
        groups = spec.groups
        self.expand: nn.Module = nn.Identity()
        if mid != in_channels or self.always_expand:
            self.expand = ConvBNAct(in_channels, mid, 1, groups=groups, activation=spec.activation)
            if groups > 1:
                self.expand.append(ChannelShuffle(groups))
        self.depthwise = ConvBNAct(mid, mid, spec.kernel, spec.stride, groups=mid, activation=spec.activation)
        self.se = SqueezeExcite.for_block(spec, in_channels, mid)
        self.project = ConvBNAct(mid, spec.out_channels, 1, groups=groups, activation=None)
        self.residual = spec.has_residual(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.residual else out


@BLOCKS.register(Op.IRF.value)
class IRFBlock(MBConv):
    """FBNet's block (HW-NAS-Bench `ConvBlock`): an MBConv whose 1x1 expand is there even at
    expansion 1, ReLU after the expand and the depthwise conv, linear project, identity shortcut
    when shapes match."""

    always_expand = True


@BLOCKS.register(Op.PW.value)
class PointwiseConv(ConvBNAct):
    """1x1 conv (stride as given) + BN + act: FBNet's `skip` op where the shape changes."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__(in_channels, spec.out_channels, 1, spec.stride, activation=spec.activation)


@BLOCKS.register(Op.SHUFFLE_V1.value)
class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1 unit (Zhang et al., CVPR 2018, Fig. 2; megvii's reference): grouped 1x1 to the
    bottleneck (out / 4) + BN + act, channel shuffle, depthwise kxk (stride) + BN, grouped 1x1 + BN;
    stride 1 adds the input, stride 2 concatenates a 3x3 average pool of it (so the conv branch
    makes `out - in` channels); the activation follows. The first 1x1 is not grouped when the input
    is narrower than the bottleneck (the paper's first unit after the stem: "the number of input
    channels is relatively small")."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        mid = spec.mid(in_channels)
        branch_out = spec.out_channels - (in_channels if spec.stride == 2 else 0)
        first_groups = 1 if in_channels < mid else spec.groups
        self.expand = ConvBNAct(in_channels, mid, 1, groups=first_groups, activation=spec.activation)
        self.shuffle = ChannelShuffle(spec.groups) if spec.groups > 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, spec.kernel, spec.stride, groups=mid, activation=None)
        self.project = ConvBNAct(mid, branch_out, 1, groups=spec.groups, activation=None)
        self.pool = nn.AvgPool2d(3, 2, 1) if spec.stride == 2 else None
        self.act = make_activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.shuffle(self.expand(x))))
        out = torch.cat((self.pool(x), out), dim=1) if self.pool is not None else out + x
        return self.act(out)


@BLOCKS.register(Op.SHUFFLE.value)
class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split channels in half, transform one half, concat, shuffle.
    Stride 2: both branches see the whole input and each halves the resolution.
    `expand_ratio` widens the branch's inner 1x1 (1.0 = the paper's unit)."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        branch_out = spec.out_channels // 2
        branch_in = in_channels if spec.stride == 2 else branch_out
        mid = spec.mid(in_channels)
        self.stride = spec.stride
        if spec.stride == 2:
            self.branch1: nn.Module = nn.Sequential(
                ConvBNAct(in_channels, in_channels, spec.kernel, 2, groups=in_channels, activation=None),
                ConvBNAct(in_channels, branch_out, 1, activation=spec.activation),
            )
        else:
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(
            ConvBNAct(branch_in, mid, 1, activation=spec.activation),
            ConvBNAct(mid, mid, spec.kernel, spec.stride, groups=mid, activation=None),
            SqueezeExcite.for_block(spec, branch_in, mid),
            ConvBNAct(mid, branch_out, 1, activation=spec.activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class GhostModule(nn.Module):
    """Half the output from a 1x1 conv, the other half from a cheap 3x3 depthwise conv of it."""

    def __init__(self, in_channels: int, out_channels: int, activation: Activation | None) -> None:
        super().__init__()
        self.out_channels = out_channels
        primary = math.ceil(out_channels / 2)
        self.primary = ConvBNAct(in_channels, primary, 1, activation=activation)
        self.cheap = ConvBNAct(primary, primary, 3, groups=primary, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        return torch.cat((primary, self.cheap(primary)), dim=1)[:, : self.out_channels]


@BLOCKS.register(Op.GHOST.value)
class GhostBottleneck(nn.Module):
    """Ghost module (expand, with activation) -> depthwise kxk when strided -> SE -> Ghost module
    (project, linear). The shortcut is identity when shapes match, else depthwise kxk + 1x1."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        mid = spec.mid(in_channels)
        self.expand = GhostModule(in_channels, mid, spec.activation)
        self.depthwise = (
            ConvBNAct(mid, mid, spec.kernel, spec.stride, groups=mid, activation=None)
            if spec.stride > 1
            else nn.Identity()
        )
        self.se = SqueezeExcite.for_block(spec, in_channels, mid)
        self.project = GhostModule(mid, spec.out_channels, None)
        if spec.has_residual(in_channels):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBNAct(in_channels, in_channels, spec.kernel, spec.stride, groups=in_channels, activation=None),
                ConvBNAct(in_channels, spec.out_channels, 1, activation=None),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.depthwise(self.expand(x)))) + self.shortcut(x)


@BLOCKS.register(Op.DSCONV.value)
class DSConv(nn.Sequential):
    """MobileNetV1: depthwise kxk + BN + act, pointwise 1x1 + BN + act; no shortcut."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, spec.kernel, spec.stride, groups=in_channels, activation=spec.activation),
            ConvBNAct(in_channels, spec.out_channels, 1, activation=spec.activation),
        )


class ActConvBN(nn.Sequential):
    """Activation first, then conv (no bias) + BN: NB201's `ReLUConvBN`. Not in-place: a cell
    feeds one node to several edges."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 activation: Activation = Activation.RELU) -> None:
        super().__init__(
            make_activation(activation),
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels),
        )


def cell_edge(name: str, channels: int, activation: Activation) -> nn.Module | None:
    """One NB201 edge op at stride 1 and constant width; None for `none` (the edge is absent)."""
    if name == "none":
        return None
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        # NB201 averages over the valid pixels only at the border
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}[name]
    return ActConvBN(channels, channels, kernel, activation=activation)


@BLOCKS.register(Op.CELL.value)
class Cell(nn.Module):
    """NB201 cell: node 0 is the input, node j the sum of op(i -> j)(node i) over i < j, node 3 the
    output. A `none` edge builds nothing (NB201 multiplies its input by zero: the same sum, no
    MACs), so a node whose edges are all `none` is zeros. When no path of edges leads from node 0
    to node 3, the output does not depend on the input."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        self.links: list[tuple[int, int, str]] = []  # (from node, to node, key in self.ops)
        self.ops = nn.ModuleDict()
        for (source, target), name in zip(CELL_EDGES, spec.edges):
            op = cell_edge(name, spec.out_channels, spec.activation)
            if op is not None:
                key = f"{target}<-{source}"
                self.ops[key] = op
                self.links.append((source, target, key))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for target in range(1, 4):
            inputs = [self.ops[key](nodes[source]) for source, to, key in self.links if to == target]
            nodes.append(sum(inputs[1:], inputs[0]) if inputs else torch.zeros_like(x))
        return nodes[-1]


@BLOCKS.register(Op.RESBLOCK.value)
class ResBlock(nn.Module):
    """NB201's `ResNetBasicblock`: act-conv kxk (stride) - BN, act-conv kxk - BN, plus a shortcut,
    no activation after the sum. Shortcut: 2x2 average pool (stride 2) + 1x1 conv without BN when
    strided; act-conv 1x1 - BN when only the width changes; identity otherwise."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        out = spec.out_channels
        self.conv_a = ActConvBN(in_channels, out, spec.kernel, spec.stride, spec.activation)
        self.conv_b = ActConvBN(out, out, spec.kernel, 1, spec.activation)
        if spec.stride == 2:
            self.shortcut: nn.Module = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(in_channels, out, 1, bias=False))
        elif in_channels != out:
            self.shortcut = ActConvBN(in_channels, out, 1, activation=spec.activation)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


@BLOCKS.register(Op.FIRE.value)
class Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al., 2016, Sec. 3.2; torchvision's `Fire`): squeeze 1x1
    to `mid` channels + act, then expand 1x1 (out // 2 channels) and expand kxk (the rest, 'same'
    padding) in parallel, each + act, concatenated. Convs carry biases and no batch norm, as the
    paper's. Stride 2 max-pools the input first, 3x3/s2 unpadded in ceil mode: the pooling
    SqueezeNet puts between its fire stages."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        mid, expand1x1 = spec.mid(in_channels), spec.out_channels // 2
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True) if spec.stride == 2 else nn.Identity()
        self.squeeze = nn.Sequential(nn.Conv2d(in_channels, mid, 1), make_activation(spec.activation))
        self.expand1x1 = nn.Sequential(nn.Conv2d(mid, expand1x1, 1), make_activation(spec.activation))
        self.expand3x3 = nn.Sequential(nn.Conv2d(mid, spec.out_channels - expand1x1, spec.kernel,
                                                 padding=spec.kernel // 2), make_activation(spec.activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(self.pool(x))
        return torch.cat((self.expand1x1(x), self.expand3x3(x)), dim=1)


def build_block(spec: BlockSpec, in_channels: int, path: str = "block.ranks") -> nn.Module:
    """The block's module; convs named in `spec.ranks` are built low-rank (errors name `path`)."""
    block = BLOCKS.get(spec.op.value)(in_channels, spec)
    apply_ranks(block, spec.ranks, path)
    return block
