"""The `mnasnet` space's op types as width-elastic shared paths of one supernet position
(`search_spaces.blocks`' MBConv, DSConv, Ghost bottleneck and ShuffleNetV2 unit), each serving
any kernel, expansion, SE setting, input width and output width of its op through leading slices
(`elastic_sliced`). `set_block(block, in_channels)` selects the setting; `extract_block` gives the
state dict of `build_block(block, in_channels)`.

An MBConv of expansion 1 has no expand conv in our build (its inner tensor is its input), so it
is a path of its own (`mbconv_e1`) rather than a slice of the expanding one, as FBNet's e1 ops
are. A Ghost module's output is its primary half then its cheap half, cut to the width: leading
slices of both halves give exactly that concatenation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nas.oneshot.elastic_layers import bn_targets, mid_channels, permute_
from nas.oneshot.elastic_sliced import SlicedDepthwise, SlicedPointwise, SlicedSE
from search_spaces.blocks import channel_shuffle, se_squeeze_channels
from search_spaces.spec import Activation, BlockSpec, Op, SEStyle

__all__ = ["WidthDSConv", "WidthGhost", "WidthMBConv", "WidthShuffle", "path_family"]


def path_family(block: BlockSpec) -> str:
    """Which shared path of a mnasnet position runs `block`."""
    if block.op is Op.MBCONV and block.expand_ratio == 1.0:
        return "mbconv_e1"
    return block.op.value


def squeeze_of(block: BlockSpec, block_in: int, mid: int) -> int:
    return se_squeeze_channels(SEStyle.EFFICIENTNET, block.se_ratio, block_in, mid) if block.se_ratio else 0


class WidthPath(nn.Module):
    """The active setting of a path: its block and input width."""

    def __init__(self) -> None:
        super().__init__()
        self.block: BlockSpec | None = None
        self.in_channels = 0

    def set_block(self, block: BlockSpec, in_channels: int | None = None) -> None:
        if in_channels is None:
            raise ValueError(f"{type(self).__name__}: a width-elastic path needs the block's input width")
        self.block, self.in_channels = block, in_channels

    def reorder_channels(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        return  # channel order stays as trained: slices of any width keep their meaning


class WidthMBConv(WidthPath):
    """Expand 1x1 (absent for `expanding=False`: expansion 1) -> depthwise kxk -> SE -> project 1x1,
    identity shortcut where the shapes match."""

    def __init__(self, in_max: int, out_max: int, stride: int, kernels: tuple[int, ...], expand_max: float,
                 se_max: float, activation: Activation, *, expanding: bool) -> None:
        super().__init__()
        mid_max = mid_channels(in_max, expand_max) if expanding else in_max
        self.expand = SlicedPointwise(in_max, mid_max, activation) if expanding else None
        self.depthwise = SlicedDepthwise(mid_max, stride, kernels, activation)
        self.se = SlicedSE(mid_max, max(1, int(in_max * se_max)), activation) if se_max else None
        self.project = SlicedPointwise(mid_max, out_max, None)

    def forward(self, x: Tensor) -> Tensor:
        block, in_channels = self.block, self.in_channels
        mid = block.mid(in_channels)
        out = self.expand(x, mid) if self.expand is not None else x
        out = self.depthwise(out, block.kernel)
        if block.se_ratio:
            out = self.se(out, squeeze_of(block, in_channels, mid))
        out = self.project(out, block.out_channels)
        return out + x if block.has_residual(in_channels) else out

    @torch.no_grad()
    def reorder_channels(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Inner channels by decreasing L1 norm of the project weights' input columns (OFA's
        criterion), everywhere they appear; without an expand conv they are the block's input."""
        if self.expand is None:
            return
        order = torch.sort(self.project.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True).indices
        targets = [(self.expand.weight, 0), *bn_targets(self.expand.bn), (self.depthwise.weight, 0),
                   *bn_targets(self.depthwise.bn), (self.project.weight, 1)]
        if self.se is not None:
            targets += [(self.se.reduce_weight, 1), (self.se.expand_weight, 0), (self.se.expand_bias, 0)]
        permute_(targets, order, optimizer)

    @torch.no_grad()
    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        mid = block.mid(in_channels)
        out = self.expand.extract(prefix + "expand.", in_channels, mid) if self.expand is not None else {}
        out.update(self.depthwise.extract(prefix + "depthwise.", mid, block.kernel))
        if block.se_ratio:
            out.update(self.se.extract(prefix + "se.", mid, squeeze_of(block, in_channels, mid)))
        out.update(self.project.extract(prefix + "project.", mid, block.out_channels))
        return out


class WidthDSConv(WidthPath):
    """MobileNetV1's depthwise kxk + pointwise 1x1, each with BN and activation; no shortcut."""

    def __init__(self, in_max: int, out_max: int, stride: int, kernels: tuple[int, ...],
                 activation: Activation) -> None:
        super().__init__()
        self.depthwise = SlicedDepthwise(in_max, stride, kernels, activation)
        self.pointwise = SlicedPointwise(in_max, out_max, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x, self.block.kernel), self.block.out_channels)

    @torch.no_grad()
    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        return {**self.depthwise.extract(prefix + "0.", in_channels, block.kernel),
                **self.pointwise.extract(prefix + "1.", in_channels, block.out_channels)}


class SlicedGhostModule(nn.Module):
    """Half the output (rounded up) from a 1x1 conv, the rest from a 3x3 depthwise conv of it."""

    def __init__(self, in_max: int, out_max: int, activation: Activation | None) -> None:
        super().__init__()
        primary = math.ceil(out_max / 2)
        self.primary = SlicedPointwise(in_max, primary, activation)
        self.cheap = SlicedDepthwise(primary, 1, (3,), activation)

    def forward(self, x: Tensor, out: int) -> Tensor:
        primary = self.primary(x, math.ceil(out / 2))
        return torch.cat((primary, self.cheap(primary, 3)), dim=1)[:, :out]

    def extract(self, prefix: str, in_channels: int, out: int) -> dict[str, Tensor]:
        primary = math.ceil(out / 2)
        return {**self.primary.extract(prefix + "primary.", in_channels, primary),
                **self.cheap.extract(prefix + "cheap.", primary, 3)}


class WidthGhost(WidthPath):
    """Ghost bottleneck: Ghost module (act) -> depthwise kxk when strided -> SE -> Ghost module
    (linear); shortcut identity where the shapes match, else depthwise kxk + 1x1."""

    def __init__(self, in_max: int, out_max: int, stride: int, kernels: tuple[int, ...], expand_max: float,
                 se_max: float, activation: Activation) -> None:
        super().__init__()
        mid_max = mid_channels(in_max, expand_max)
        self.expand = SlicedGhostModule(in_max, mid_max, activation)
        self.depthwise = SlicedDepthwise(mid_max, stride, kernels, None) if stride > 1 else None
        self.se = SlicedSE(mid_max, max(1, int(in_max * se_max)), activation) if se_max else None
        self.project = SlicedGhostModule(mid_max, out_max, None)
        if stride > 1 or in_max != out_max:  # a stage's first layer (the later ones keep the shape)
            self.short_depthwise = SlicedDepthwise(in_max, stride, kernels, None)
            self.short_pointwise = SlicedPointwise(in_max, out_max, None)

    def forward(self, x: Tensor) -> Tensor:
        block, in_channels = self.block, self.in_channels
        mid = block.mid(in_channels)
        out = self.expand(x, mid)
        if self.depthwise is not None:
            out = self.depthwise(out, block.kernel)
        if block.se_ratio:
            out = self.se(out, squeeze_of(block, in_channels, mid))
        out = self.project(out, block.out_channels)
        if block.has_residual(in_channels):
            return out + x
        return out + self.short_pointwise(self.short_depthwise(x, block.kernel), block.out_channels)

    @torch.no_grad()
    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        mid = block.mid(in_channels)
        out = self.expand.extract(prefix + "expand.", in_channels, mid)
        if self.depthwise is not None:
            out.update(self.depthwise.extract(prefix + "depthwise.", mid, block.kernel))
        if block.se_ratio:
            out.update(self.se.extract(prefix + "se.", mid, squeeze_of(block, in_channels, mid)))
        out.update(self.project.extract(prefix + "project.", mid, block.out_channels))
        if not block.has_residual(in_channels):
            out.update(self.short_depthwise.extract(prefix + "shortcut.0.", in_channels, block.kernel))
            out.update(self.short_pointwise.extract(prefix + "shortcut.1.", in_channels, block.out_channels))
        return out


class WidthShuffle(WidthPath):
    """ShuffleNetV2 unit. Stride 2: branch1 (depthwise kxk, 1x1 + act) and branch2 both see the
    input; stride 1: branch2 transforms the second half. branch2: 1x1 + act -> depthwise kxk -> SE
    -> 1x1 + act, to half the output; concatenated and shuffled in two groups."""

    def __init__(self, in_max: int, out_max: int, stride: int, kernels: tuple[int, ...], expand_max: float,
                 se_max: float, activation: Activation) -> None:
        super().__init__()
        self.stride = stride
        branch_in = in_max if stride == 2 else out_max // 2
        mid_max = mid_channels(out_max // 2, expand_max)
        if stride == 2:
            self.branch1_depthwise = SlicedDepthwise(in_max, 2, kernels, None)
            self.branch1_pointwise = SlicedPointwise(in_max, out_max // 2, activation)
        self.branch2_expand = SlicedPointwise(branch_in, mid_max, activation)
        self.branch2_depthwise = SlicedDepthwise(mid_max, stride, kernels, None)
        self.se = SlicedSE(mid_max, max(1, int(branch_in * se_max)), activation) if se_max else None
        self.branch2_project = SlicedPointwise(mid_max, out_max // 2, activation)

    def branch2(self, x: Tensor, block: BlockSpec, branch_in: int, mid: int) -> Tensor:
        out = self.branch2_depthwise(self.branch2_expand(x, mid), block.kernel)
        if block.se_ratio:
            out = self.se(out, squeeze_of(block, branch_in, mid))
        return self.branch2_project(out, block.out_channels // 2)

    def forward(self, x: Tensor) -> Tensor:
        block, in_channels = self.block, self.in_channels
        mid, half = block.mid(in_channels), block.out_channels // 2
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed, block, half, mid)), dim=1)
        else:
            left = self.branch1_pointwise(self.branch1_depthwise(x, block.kernel), half)
            out = torch.cat((left, self.branch2(x, block, in_channels, mid)), dim=1)
        return channel_shuffle(out, 2)

    @torch.no_grad()
    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        mid, half = block.mid(in_channels), block.out_channels // 2
        branch_in = in_channels if self.stride == 2 else half
        out: dict[str, Tensor] = {}
        if self.stride == 2:
            out.update(self.branch1_depthwise.extract(prefix + "branch1.0.", in_channels, block.kernel))
            out.update(self.branch1_pointwise.extract(prefix + "branch1.1.", in_channels, half))
        out.update(self.branch2_expand.extract(prefix + "branch2.0.", branch_in, mid))
        out.update(self.branch2_depthwise.extract(prefix + "branch2.1.", mid, block.kernel))
        if block.se_ratio:
            out.update(self.se.extract(prefix + "branch2.2.", mid, squeeze_of(block, branch_in, mid)))
        out.update(self.branch2_project.extract(prefix + "branch2.3.", mid, half))
        return out
