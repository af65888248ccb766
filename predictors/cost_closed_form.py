"""Multiply-adds and parameters in closed form, from the spec alone (`macs_of_spec`,
`params_of_spec`, per layer `layer_macs`, `layer_params`, `layer_weights`): no model is built or
run, so a search can call them thousands of times. `predictors.cost` explains the convention and
holds them equal to fvcore's count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import nn

from search_spaces.blocks import se_squeeze_channels
from search_spaces.build import LayerShape, build_layer, layer_shapes
from search_spaces.spec_shapes import block_output_size, stem_output_size
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec

__all__ = ["at_resolution", "layer_macs", "layer_params", "layer_weights", "macs_of_spec", "params_of_spec"]


def at_resolution(spec: ArchSpec, resolution: int | None) -> ArchSpec:
    """`spec` at another input resolution (None: as it is)."""
    if resolution is None or resolution == spec.resolution:
        return spec
    # ArchSpec validation names the problem precisely (type, minimum, too many strided layers)
    return spec.replace(resolution=resolution)



# ---- closed form ------------------------------------------------------------------------------
# Each formula lists its block class's convs (search_spaces/blocks.py) layer by layer; MACs,
# parameters and bias adds all follow from that one list. The tests compare them with fvcore and
# with the built modules on every op in its less common forms and on every zoo model, so a block
# change that is not mirrored here fails there instead of silently skewing a search.


@dataclass(frozen=True, slots=True)
class _Conv:
    """One conv as a block builds it; a linear layer is a 1x1 conv on a 1x1 map."""

    out_size: int
    in_channels: int
    out_channels: int
    kernel: int = 1
    groups: int = 1
    bn: bool = True  # followed by batch norm: 2 affine parameters per channel, no MACs
    bias: bool = False

    @property
    def weights(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.kernel * self.kernel

    @property
    def macs(self) -> int:
        return self.out_size * self.out_size * self.weights

    @property
    def params(self) -> int:
        return self.weights + 2 * self.out_channels * self.bn + self.out_channels * self.bias

    @property
    def bias_adds(self) -> int:
        return self.out_size * self.out_size * self.out_channels if self.bias else 0


def _linear(in_features: int, out_features: int) -> _Conv:
    return _Conv(1, in_features, out_features, bn=False, bias=True)


def _batch_norm(channels: int) -> _Conv:
    """A batch norm on its own (no conv before it): parameters only."""
    return _Conv(1, 0, channels)


def _se(block: BlockSpec, block_in: int, mid: int) -> list[_Conv]:
    # two 1x1 convs with bias on the pooled 1x1 map; the mean and the gating multiply are not MACs
    if not block.se_ratio:
        return []
    squeeze = se_squeeze_channels(block.se_style, block.se_ratio, block_in, mid)
    return [_Conv(1, mid, squeeze, bn=False, bias=True), _Conv(1, squeeze, mid, bn=False, bias=True)]


def _mbconv(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    mid, groups = block.mid(c_in), block.groups
    # FBNet's irf keeps its 1x1 expand even at e1; an MBConv drops it
    expand = [_Conv(size, c_in, mid, groups=groups)] if mid != c_in or block.op is Op.IRF else []
    depthwise = _Conv(out_size, mid, mid, block.kernel, groups=mid)
    return [*expand, depthwise, *_se(block, c_in, mid), _Conv(out_size, mid, block.out_channels, groups=groups)]


def _pw(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    return [_Conv(out_size, c_in, block.out_channels)]


def _shuffle_v1(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    mid = block.mid(c_in)
    branch_out = block.out_channels - (c_in if block.stride == 2 else 0)
    first_groups = 1 if c_in < mid else block.groups  # as blocks.ShuffleV1Unit
    return [_Conv(size, c_in, mid, groups=first_groups), _Conv(out_size, mid, mid, block.kernel, groups=mid),
            _Conv(out_size, mid, branch_out, groups=block.groups)]


def _shuffle(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    branch_out = block.out_channels // 2
    branch_in = c_in if block.stride == 2 else branch_out
    mid = block.mid(c_in)
    branch1 = []
    if block.stride == 2:
        branch1 = [_Conv(out_size, c_in, c_in, block.kernel, groups=c_in), _Conv(out_size, c_in, branch_out)]
    branch2 = [
        _Conv(size, branch_in, mid),
        _Conv(out_size, mid, mid, block.kernel, groups=mid),
        *_se(block, branch_in, mid),
        _Conv(out_size, mid, branch_out),
    ]
    return branch1 + branch2


def _ghost_module(size: int, c_in: int, c_out: int) -> list[_Conv]:
    primary = math.ceil(c_out / 2)
    return [_Conv(size, c_in, primary), _Conv(size, primary, primary, 3, groups=primary)]


def _ghost(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    mid = block.mid(c_in)
    convs = _ghost_module(size, c_in, mid) + _se(block, c_in, mid) + _ghost_module(out_size, mid, block.out_channels)
    if block.stride > 1:
        convs.append(_Conv(out_size, mid, mid, block.kernel, groups=mid))
    if not block.has_residual(c_in):
        convs += [_Conv(out_size, c_in, c_in, block.kernel, groups=c_in), _Conv(out_size, c_in, block.out_channels)]
    return convs


def _dsconv(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    return [_Conv(out_size, c_in, c_in, block.kernel, groups=c_in), _Conv(out_size, c_in, block.out_channels)]


# NB201 edge op -> kernel of its ReLU-conv-BN; skip, pool and none have no weights
_CELL_CONV_KERNELS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


def _cell(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    return [_Conv(size, c_in, c_in, _CELL_CONV_KERNELS[op]) for op in block.edges if op in _CELL_CONV_KERNELS]


def _resblock(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    out = block.out_channels
    convs = [_Conv(out_size, c_in, out, block.kernel), _Conv(out_size, out, out, block.kernel)]
    if block.stride == 2:  # 2x2 average pool (no MACs), then a 1x1 conv without batch norm
        convs.append(_Conv(out_size, c_in, out, bn=False))
    elif c_in != out:
        convs.append(_Conv(size, c_in, out))
    return convs


def _fire(block: BlockSpec, c_in: int, size: int, out_size: int) -> list[_Conv]:
    # the stride-2 max-pool comes first, so every conv runs at the output size; biases, no BN
    mid, expand1x1 = block.mid(c_in), block.out_channels // 2
    return [_Conv(out_size, c_in, mid, bn=False, bias=True), _Conv(out_size, mid, expand1x1, bn=False, bias=True),
            _Conv(out_size, mid, block.out_channels - expand1x1, block.kernel, bn=False, bias=True)]


# op -> convs(block, input channels, input size, output size); one entry per block class
_BLOCK_CONVS: dict[Op, Callable[[BlockSpec, int, int, int], list[_Conv]]] = {
    Op.MBCONV: _mbconv,
    Op.SHUFFLE: _shuffle,
    Op.GHOST: _ghost,
    Op.DSCONV: _dsconv,
    Op.CELL: _cell,
    Op.RESBLOCK: _resblock,
    Op.IRF: _mbconv,
    Op.PW: _pw,
    Op.SHUFFLE_V1: _shuffle_v1,
    Op.FIRE: _fire,
}


def _layer_convs(layer: LayerShape) -> list[_Conv]:
    part = layer.part
    if isinstance(part, StemSpec):
        conv_size = stem_output_size(replace(part, pool=False), layer.in_size)  # the max-pool adds no MACs
        return [_Conv(conv_size, layer.in_channels, part.out_channels, part.kernel, bn=part.batch_norm,
                      bias=not part.batch_norm)]
    if isinstance(part, HeadSpec) and part.classifier == "conv":  # SqueezeNet's 1x1 conv before the pool
        return [_Conv(layer.in_size, layer.in_channels, layer.out_channels, bn=False, bias=True)]
    if isinstance(part, HeadSpec):
        channels, convs = layer.in_channels, []
        if part.preact:
            convs.append(_batch_norm(channels))
        if part.conv_channels:
            convs.append(_Conv(layer.in_size, channels, part.conv_channels))
            channels = part.conv_channels
        if part.hidden_channels:
            convs.append(_linear(channels, part.hidden_channels))
            channels = part.hidden_channels
        return [*convs, _linear(channels, layer.out_channels)]
    return _BLOCK_CONVS[part.op](part, layer.in_channels, layer.in_size, layer.out_size)


def _cost(layer: LayerShape) -> tuple[int, int, int]:
    part = layer.part
    if isinstance(part, BlockSpec) and part.op not in _BLOCK_CONVS:
        raise NotImplementedError(
            f"{layer.name}: no closed-form cost for op {part.op.value!r}; use count() or add it to _BLOCK_CONVS"
        )
    return _layer_cost(layer.kind, part, layer.in_channels, layer.in_size, layer.out_channels)


def layer_macs(layer: LayerShape, *, with_bias: bool = False) -> int:
    """MACs of one layer from its spec and input shape, without building it. `with_bias` adds one
    per output value of each layer with a bias (the SE convs, linear layers), as NAS-Bench-201's
    counter does."""
    macs, bias_adds, _ = _cost(layer)
    return macs + bias_adds if with_bias else macs


def layer_params(layer: LayerShape) -> int:
    """Learnable parameters of one layer (weights, biases, batch-norm scale and shift), without
    building it; equals `count(...)`'s per-layer params (held equal by the tests)."""
    return _cost(layer)[2]


@lru_cache(maxsize=65536)  # a network repeats its layers (NB201: each cell 5 times), a search its networks
def _layer_cost(kind: str, part: StemSpec | BlockSpec | HeadSpec, in_channels: int, in_size: int,
                out_channels: int) -> tuple[int, int, int]:
    """(MACs, bias adds, params) of a layer; the output size follows from the part and `in_size`."""
    if kind == "head":
        out_size = 1
    else:
        out_size = stem_output_size(part, in_size) if kind == "stem" else block_output_size(part, in_size)
    if getattr(part, "ranks", ()):
        return _shape_cost(LayerShape("", kind, in_channels, in_size, out_channels, out_size, part))
    convs = _layer_convs(LayerShape("", kind, in_channels, in_size, out_channels, out_size, part))
    return (sum(conv.macs for conv in convs), sum(conv.bias_adds for conv in convs),
            sum(conv.params for conv in convs))


def _shape_cost(layer: LayerShape) -> tuple[int, int, int]:
    """(MACs, bias adds, params) of a layer with low-rank convs (`BlockSpec.ranks`): any conv of
    any block may be factorized, so rather than a formula per (op, conv) the module is built on
    the meta device (shapes, no memory) and one forward pass there gives each conv's output map."""
    with torch.device("meta"):
        module = build_layer(layer, initialise=False).eval()
    outputs: dict[nn.Module, torch.Size] = {}
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(lambda m, _, out: outputs.__setitem__(m, out.shape)) for m in layers]
    with torch.no_grad():
        module(torch.empty(layer.input_shape, device="meta"))
    for hook in hooks:
        hook.remove()
    macs = bias_adds = 0
    for m in layers:
        shape = outputs.get(m)
        if shape is None:  # not on the forward path (a cell's dead edge): never runs, no MACs
            continue
        per_weight = math.prod(shape[2:]) if isinstance(m, nn.Conv2d) else math.prod(shape[:-1])
        macs += m.weight.numel() * per_weight
        bias_adds += math.prod(shape) if m.bias is not None else 0
    return macs, bias_adds, sum(p.numel() for p in module.parameters())


def layer_weights(layer: LayerShape) -> int:
    """Conv and linear weights of one layer (no biases, no batch norm): its MACs with every map
    at 1x1, since each weight is then used exactly once. What a network streams from memory
    per inference, which a latency table's isolated timings (weights warm in cache) do not see."""
    return _weights(layer.kind, layer.part, layer.in_channels, layer.out_channels)


@lru_cache(maxsize=65536)  # a search asks for the same few thousand layers over and over
def _weights(kind: str, part: StemSpec | BlockSpec | HeadSpec, in_channels: int, out_channels: int) -> int:
    if getattr(part, "ranks", ()):  # a 1x1 map would not pass a strided resblock's 2x2 pool: count the weights
        with torch.device("meta"):
            module = build_layer(LayerShape("", kind, in_channels, 1, out_channels, 1, part), initialise=False)
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    # a weight count does not depend on the map size (an unpadded stem or a pooling fire module
    # would shrink a 1x1 map to nothing, so the sizes are not taken from a 1x1 input)
    return sum(conv.weights for conv in _layer_convs(LayerShape("", kind, in_channels, 1, out_channels, 1, part)))


def macs_of_spec(spec: ArchSpec, resolution: int | None = None, *, with_bias: bool = False) -> int:
    """Total MACs from the spec alone; equals `count(spec).macs` (held equal by the tests).
    `with_bias=True` counts bias additions too (see `layer_macs`)."""
    return sum(layer_macs(layer, with_bias=with_bias) for layer in layer_shapes(at_resolution(spec, resolution)))


def params_of_spec(spec: ArchSpec) -> int:
    """Total learnable parameters from the spec alone; equals `count(spec).params`."""
    return sum(layer_params(layer) for layer in layer_shapes(spec))
