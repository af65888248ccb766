"""Sliced building blocks for an elastic supernet whose widths vary on both sides of a conv (the
`mnasnet` space's elastic width, Cai et al., ICLR 2020, Sec. 3.2 "elastic width"): each holds the
widest tensor and serves a narrower setting with its leading slice, `[:out, :in]`. The input
width is read off the input tensor, so a block follows whatever width the block before it ran.

`extract` gives the same slices under the key names of `search_spaces.blocks` (a `ConvBNAct` is
`0.weight` + `1.*`, a `SqueezeExcite` is `reduce.*` + `expand.*`), so a sub-network's weights
load into the plain model unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.oneshot.elastic_layers import SlicedBatchNorm2d, elastic_kernel
from search_spaces.blocks import make_activation
from search_spaces.spec import Activation

__all__ = ["SlicedDepthwise", "SlicedPointwise", "SlicedSE"]


class SlicedPointwise(nn.Module):
    """1x1 conv (no bias) + BN + optional activation of the widest `out_max` x `in_max`."""

    def __init__(self, in_max: int, out_max: int, activation: Activation | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_max, in_max, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bn = SlicedBatchNorm2d(out_max)
        self.act = make_activation(activation)

    def forward(self, x: Tensor, out: int) -> Tensor:
        return self.act(self.bn.sliced(F.conv2d(x, self.weight[:out, :x.shape[1]]), out))

    def extract(self, prefix: str, in_channels: int, out: int) -> dict[str, Tensor]:
        return {prefix + "0.weight": self.weight[:out, :in_channels].detach().clone(),
                **self.bn.extract(out, prefix + "1.")}


class SlicedDepthwise(nn.Module):
    """Depthwise kxk (no bias) + BN + optional activation, elastic in channels and kernel: one
    weight of the largest kernel whose centre serves the smaller ones through a learned matrix per
    kernel (OFA's kernel transformation, identity at start), as `ElasticMBConv` does."""

    def __init__(self, channels_max: int, stride: int, kernels: tuple[int, ...], activation: Activation | None) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels_max, 1, self.kernels[0], self.kernels[0]))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        for kernel in self.kernels[1:]:
            self.register_parameter(f"kernel_transform_{kernel}", nn.Parameter(torch.eye(kernel * kernel)))
        self.bn = SlicedBatchNorm2d(channels_max)
        self.act = make_activation(activation)

    def kernel_weight(self, kernel: int, channels: int) -> Tensor:
        if kernel not in self.kernels:
            raise ValueError(f"SlicedDepthwise: kernel={kernel} not in {self.kernels}")
        return elastic_kernel(self, self.weight[:channels], self.kernels, kernel)

    def forward(self, x: Tensor, kernel: int) -> Tensor:
        channels = x.shape[1]
        out = F.conv2d(x, self.kernel_weight(kernel, channels), None, self.stride, kernel // 2, 1, channels)
        return self.act(self.bn.sliced(out, channels))

    def extract(self, prefix: str, channels: int, kernel: int) -> dict[str, Tensor]:
        return {prefix + "0.weight": self.kernel_weight(kernel, channels).detach().clone(),
                **self.bn.extract(channels, prefix + "1.")}


class SlicedSE(nn.Module):
    """EfficientNet-style squeeze-excite (pool, 1x1 reduce + act, 1x1 expand, sigmoid gate) of the
    widest `channels_max` x `squeeze_max`; a block uses its own channels and squeeze width."""

    def __init__(self, channels_max: int, squeeze_max: int, activation: Activation) -> None:
        super().__init__()
        self.reduce_weight = nn.Parameter(torch.empty(squeeze_max, channels_max, 1, 1))
        self.reduce_bias = nn.Parameter(torch.zeros(squeeze_max))
        self.expand_weight = nn.Parameter(torch.empty(channels_max, squeeze_max, 1, 1))
        self.expand_bias = nn.Parameter(torch.zeros(channels_max))
        for weight in (self.reduce_weight, self.expand_weight):
            nn.init.kaiming_normal_(weight, mode="fan_out")
        self.act = make_activation(activation)

    def forward(self, x: Tensor, squeeze: int) -> Tensor:
        channels = x.shape[1]
        scale = F.conv2d(x.mean((2, 3), keepdim=True), self.reduce_weight[:squeeze, :channels],
                         self.reduce_bias[:squeeze])
        scale = F.conv2d(self.act(scale), self.expand_weight[:channels, :squeeze], self.expand_bias[:channels])
        return x * torch.sigmoid(scale)

    def extract(self, prefix: str, channels: int, squeeze: int) -> dict[str, Tensor]:
        return {prefix + "reduce.weight": self.reduce_weight[:squeeze, :channels].detach().clone(),
                prefix + "reduce.bias": self.reduce_bias[:squeeze].detach().clone(),
                prefix + "expand.weight": self.expand_weight[:channels, :squeeze].detach().clone(),
                prefix + "expand.bias": self.expand_bias[:channels].detach().clone()}
