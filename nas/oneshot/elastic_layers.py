"""Elastic layers of a Once-for-All supernet (Cai, Gan, Wang, Zhang, Han, ICLR 2020, Sec. 3.2).

One `ElasticMBConv` holds the weights of the widest, largest-kernel inverted residual of one
position and runs any smaller one:

- elastic kernel: one depthwise weight of the largest kernel; a smaller kernel is the centre crop
  of the next larger (already transformed) kernel passed through a learned square matrix per
  layer, shared by all channels (paper: "kernel transformation matrices"), initialised to the
  identity so that a fresh supernet starts with plain centre crops;
- elastic expansion: the expand 1x1, the depthwise conv, their BatchNorms and the project 1x1 are
  sliced to the first `mid` inner channels; `reorder_channels` keeps the most important channels
  first (importance = L1 norm of the project weights' input columns, OFA's criterion);
- BatchNorm: one BN of the widest inner width; a slice uses the first `mid` entries of its affine
  parameters and running statistics (and updates those entries in place while training).

`extract` turns the active setting into the state dict of the plain `MBConv` that
`search_spaces.build` makes for the same `BlockSpec`, so an extracted sub-network is an ordinary
model (same keys, same values, same outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.blocks import build_block, channel_shuffle, make_activation
from search_spaces.spec import Activation, BlockSpec

__all__ = ["ElasticChoice", "ElasticMBConv", "FixedBlock", "SlicedBatchNorm2d", "bn_targets", "elastic_kernel", "permute_"]

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm of the widest width whose first `channels` entries serve a narrower tensor."""

    def sliced(self, x: Tensor, channels: int) -> Tensor:
        if channels == self.num_features:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d does
                factor = 1.0 / float(self.num_batches_tracked)
        # slices of 1-D buffers are views: the running statistics are updated in place
        return F.batch_norm(x, self.running_mean[:channels], self.running_var[:channels], self.weight[:channels],
                            self.bias[:channels], self.training, factor, self.eps)

    def extract(self, channels: int, prefix: str) -> dict[str, Tensor]:
        out = {}
        for key in BN_KEYS:
            value = getattr(self, key)
            out[prefix + key] = (value if value.dim() == 0 else value[:channels]).detach().clone()
        return out


@torch.no_grad()
def permute_(targets: list[tuple[Tensor, int]], order: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Reorder each tensor along its dim by `order`, and the optimizer's per-parameter state with
    it (momentum stays with its weight)."""
    for tensor, dim in targets:
        tensor.copy_(tensor.index_select(dim, order))
        state = optimizer.state.get(tensor) if optimizer is not None else None
        for value in (state or {}).values():
            if torch.is_tensor(value) and value.shape == tensor.shape:
                value.copy_(value.index_select(dim, order))


def bn_targets(bn: nn.BatchNorm2d) -> list[tuple[Tensor, int]]:
    return [(bn.weight, 0), (bn.bias, 0), (bn.running_mean, 0), (bn.running_var, 0)]


def elastic_kernel(owner: nn.Module, weight: Tensor, kernels: tuple[int, ...], kernel: int) -> Tensor:
    """OFA's elastic kernel: the centre of a depthwise `weight` (C x 1 x K x K, K = kernels[0], the
    kernels in decreasing order) passed through each smaller kernel's learned transform
    (`owner.kernel_transform_<k>`), down to `kernel`."""
    channels = weight.shape[0]
    for smaller in kernels[1:]:
        if smaller < kernel:
            break
        start = (weight.shape[-1] - smaller) // 2
        crop = weight[:, :, start:start + smaller, start:start + smaller]
        matrix = getattr(owner, f"kernel_transform_{smaller}")
        weight = F.linear(crop.reshape(channels, smaller * smaller), matrix).reshape(channels, 1, smaller, smaller)
    return weight


def mid_channels(in_channels: int, expand_ratio: float) -> int:
    """`BlockSpec.mid` of an MBConv: the inner width for an input width and expansion."""
    return max(1, int(round(in_channels * expand_ratio)))


class ElasticMBConv(nn.Module):
    """Every (kernel, expansion) MBConv of one position; `active_kernel` / `active_mid` select one.

    `kernels` / `expand_ratios` are the choices to cover. The expand 1x1 exists when some choice
    has an inner width other than the input's; a choice whose inner width equals the input
    (expansion 1) is then refused, because the plain block has no expand conv there and so is
    not a slice of this one (the supernet plan keeps such positions fixed at expansion 1).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernels: tuple[int, ...],
                 expand_ratios: tuple[float, ...], activation: Activation, *, always_expand: bool = False,
                 groups: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"ElasticMBConv: kernels {kernels} must be odd")
        mids = sorted({mid_channels(in_channels, e) for e in expand_ratios})
        self.has_expand = always_expand or mids != [in_channels]
        if self.has_expand and not always_expand and in_channels in mids:
            raise ValueError(f"ElasticMBConv: expansion choices {expand_ratios} mix blocks with and without an "
                             "expand conv")
        if groups > 1 and len(mids) > 1:  # a grouped, shuffled inner tensor has no prefix slices
            raise ValueError(f"ElasticMBConv: grouped 1x1 convs take one expansion, got {expand_ratios}")
        self.max_mid = mids[-1]
        self.mids = tuple(mids)
        if self.has_expand:
            self.expand_weight = nn.Parameter(torch.empty(self.max_mid, in_channels // groups, 1, 1))
            self.expand_bn = SlicedBatchNorm2d(self.max_mid)
        largest = self.kernels[0]
        self.depthwise_weight = nn.Parameter(torch.empty(self.max_mid, 1, largest, largest))
        for kernel in self.kernels[1:]:  # one matrix per smaller kernel, applied to its centre crop
            self.register_parameter(f"kernel_transform_{kernel}", nn.Parameter(torch.eye(kernel * kernel)))
        self.depthwise_bn = SlicedBatchNorm2d(self.max_mid)
        self.project_weight = nn.Parameter(torch.empty(out_channels, self.max_mid // groups, 1, 1))
        self.project_bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)
        self.residual = stride == 1 and in_channels == out_channels
        self.active_kernel, self.active_mid = largest, self.max_mid
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # what search_spaces.build initialises a plain MBConv with: He fan-out, unit BN
        for name in ("expand_weight", "depthwise_weight", "project_weight"):
            if hasattr(self, name):
                nn.init.kaiming_normal_(getattr(self, name), mode="fan_out")

    def set_block(self, block: BlockSpec, in_channels: int | None = None) -> None:
        self.set_active(block.kernel, block.mid(self.in_channels))  # its input width is fixed

    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        return self.extract(block.kernel, block.mid(self.in_channels), prefix)

    def set_active(self, kernel: int, mid: int) -> None:
        if kernel not in self.kernels:
            raise ValueError(f"ElasticMBConv: kernel={kernel} not in {self.kernels}")
        if mid not in self.mids:
            raise ValueError(f"ElasticMBConv: inner width {mid} not in {self.mids}")
        self.active_kernel, self.active_mid = kernel, mid

    def depthwise_kernel(self, kernel: int, mid: int) -> Tensor:
        """The effective `kernel` x `kernel` depthwise weight of the first `mid` channels."""
        return elastic_kernel(self, self.depthwise_weight[:mid], self.kernels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        kernel, mid = self.active_kernel, self.active_mid
        out = x
        if self.has_expand:
            out = self.act(self.expand_bn.sliced(F.conv2d(x, self.expand_weight[:mid], groups=self.groups), mid))
            if self.groups > 1:
                out = channel_shuffle(out, self.groups)
        out = F.conv2d(out, self.depthwise_kernel(kernel, mid), None, self.stride, kernel // 2, 1, mid)
        out = self.act(self.depthwise_bn.sliced(out, mid))
        out = self.project_bn(F.conv2d(out, self.project_weight[:, :mid // self.groups], groups=self.groups))
        return out + x if self.residual else out

    @torch.no_grad()
    def extract(self, kernel: int, mid: int, prefix: str) -> dict[str, Tensor]:
        """The state dict (keys under `prefix`) of `search_spaces.blocks.MBConv` for this setting."""
        out: dict[str, Tensor] = {}
        if self.has_expand:
            out[prefix + "expand.0.weight"] = self.expand_weight[:mid].detach().clone()
            out.update(self.expand_bn.extract(mid, prefix + "expand.1."))
        out[prefix + "depthwise.0.weight"] = self.depthwise_kernel(kernel, mid).detach().clone()
        out.update(self.depthwise_bn.extract(mid, prefix + "depthwise.1."))
        out[prefix + "project.0.weight"] = self.project_weight[:, :mid // self.groups].detach().clone()
        out.update({prefix + "project.1." + k: v.detach().clone() for k, v in self.project_bn.state_dict().items()})
        return out

    def importance_order(self) -> Tensor:
        """Inner channels by decreasing L1 norm of the project weights' input columns."""
        importance = self.project_weight.detach().abs().sum(dim=(0, 2, 3))
        return torch.sort(importance, descending=True, stable=True).indices

    @torch.no_grad()
    def reorder_channels(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Permute the inner channels, most important first, everywhere they appear (and in the
        optimizer's per-parameter state, so momentum stays with its weight). The widest block
        computes the same function afterwards; narrower slices keep the important channels."""
        if not self.has_expand or self.groups > 1:  # the block's input, or grouped: no free order
            return
        order = self.importance_order()
        permute_([(self.expand_weight, 0), (self.depthwise_weight, 0), (self.project_weight, 1),
                  *bn_targets(self.expand_bn), *bn_targets(self.depthwise_bn)], order, optimizer)


class FixedBlock(nn.Module):
    """A path without elastic dimensions (FBNet's 1x1 `pw` skip): the plain block itself."""

    def __init__(self, block: BlockSpec, in_channels: int) -> None:
        super().__init__()
        self.spec = block
        self.block = build_block(block, in_channels)

    def set_block(self, block: BlockSpec, in_channels: int | None = None) -> None:
        if block != self.spec:
            raise ValueError(f"FixedBlock: {block.to_string()} is not {self.spec.to_string()}")

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)

    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        return {prefix + k: v.detach().clone() for k, v in self.block.state_dict().items()}

    def reorder_channels(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        return


class ElasticChoice(nn.Module):
    """Op-type choices of one position as separate shared paths (paths[family] elastic in itself);
    `family_of(block)` names the path a block runs on."""

    def __init__(self, paths: dict[str, nn.Module], family_of) -> None:
        super().__init__()
        self.paths = nn.ModuleDict(paths)
        self.family_of = family_of
        self.active = next(iter(paths))

    def set_block(self, block: BlockSpec, in_channels: int | None = None) -> None:
        family = self.family_of(block)
        if family not in self.paths:
            raise ValueError(f"ElasticChoice: no path {family!r} here (paths: {', '.join(self.paths)})")
        self.paths[family].set_block(block, in_channels)
        self.active = family

    def forward(self, x: Tensor) -> Tensor:
        return self.paths[self.active](x)

    def extract_block(self, block: BlockSpec, prefix: str, in_channels: int | None = None) -> dict[str, Tensor]:
        return self.paths[self.family_of(block)].extract_block(block, prefix, in_channels)

    def reorder_channels(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        for path in self.paths.values():
            path.reorder_channels(optimizer)
