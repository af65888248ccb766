"""What an architecture costs in parameters and multiply-adds, per layer and in total.

Convention (the papers'): MACs are the multiply-adds of convolutions and fully connected layers,
one per multiply-accumulate, biases excluded. Batch norm (folded into the convs at inference),
activations, element-wise adds and multiplies (residuals, SE gating), pooling and means are not
counted. Under this convention MobileNetV2 at 224x224 costs 300.8M MACs (paper: 300M).

Two ways to get MACs that agree exactly (tests hold them equal on every zoo model):

- `count(model_or_spec)`: fvcore's `FlopCountAnalysis` on a traced forward pass, restricted to
  conv and matmul-like ops. Works for any module.
- `macs_of_spec(spec)`: closed form per block, from the spec alone, without building or running
  anything; cheap enough to call thousands of times inside a search. `params_of_spec(spec)` is
  the same for parameters (weights, biases, batch-norm scale and shift), equal to `count`'s.

NAS-Bench-201 (Dong & Yang, ICLR 2020) reports "FLOPs" that are these MACs plus one per output
of every layer with a bias (`macs_of_spec(spec, with_bias=True)`); in its networks only the
classifier has one, so its FLOPs are our MACs + `num_classes` (exact on all 15,625 cells, see
`search_spaces/spaces/nb201.py`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from predictors.cost_closed_form import (  # the closed form, re-exported beside the traced count
    at_resolution,
    layer_macs,
    layer_params,
    layer_weights,
    macs_of_spec,
    params_of_spec,
)
from search_spaces.build import Network, build_model, layer_shapes
from search_spaces.spec import ArchSpec

__all__ = ["Cost", "LayerCost", "count", "layer_macs", "layer_params", "layer_weights", "macs_of_spec",
           "params_of_spec"]

logger = logging.getLogger(__name__)

# fvcore's defaults also count batch norm, norms, upsampling and adaptive pooling. Its
# `set_op_handle(name, None)` cannot switch those off (a handle already registered wins over the
# ignore list), so the analysis starts from a cleared table holding only these multiply-add ops
# (fvcore's handles count one per multiply-accumulate, biases excluded).
_MAC_OPS = {
    "aten::_convolution": "conv_flop_jit",
    "aten::linear": "linear_flop_jit",
    "aten::addmm": "addmm_flop_jit",
    "aten::mm": "matmul_flop_jit",
    "aten::matmul": "matmul_flop_jit",
    "aten::bmm": "bmm_flop_jit",
    "aten::einsum": "einsum_flop_jit",
}
# Ops that cost time but are not multiply-adds under the papers' convention; ignored explicitly so
# that only genuinely unknown ops would ever show up as unsupported.
_NOT_MACS = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
    "aten::max_pool2d",
    "aten::avg_pool2d",
    "aten::mean",
    "aten::add",
    "aten::add_",
    "aten::mul",
    "aten::mul_",
    "aten::sigmoid",
    "aten::hardsigmoid",
    "aten::hardswish",
    "aten::hardtanh",
    "aten::silu",
)


@dataclass(frozen=True, slots=True)
class LayerCost:
    name: str  # "stem", "blocks.3", "head" for a spec; a child module's name otherwise
    params: int
    macs: int


@dataclass(frozen=True, slots=True)
class Cost:
    """Totals and the per-layer split; the per-layer figures sum to the totals."""

    params: int
    macs: int
    per_layer: tuple[LayerCost, ...]

    def layer(self, name: str) -> LayerCost:
        for layer in self.per_layer:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {', '.join(layer.name for layer in self.per_layer)}")

    def to_dict(self) -> dict[str, object]:
        return {
            "params": self.params,
            "macs": self.macs,
            "per_layer": [{"name": layer.name, "params": layer.params, "macs": layer.macs} for layer in self.per_layer],
        }


def count(
    model_or_spec: nn.Module | ArchSpec, resolution: int | None = None, *, in_channels: int = 3
) -> Cost:
    """Parameters and MACs of a spec, a built `Network`, or any module taking one image batch.

    For a spec or `Network`, `resolution` defaults to the spec's and layers are the spec's
    ("stem", "blocks.i", "head"). Any other module needs `resolution` (input 1 x in_channels x
    resolution x resolution) and is split by its direct children; MACs from ops outside them go to
    a layer named "". The module's training flags are restored afterwards (it is run in eval mode,
    so batch norm neither updates its statistics nor fails at batch 1 on a 1x1 map).
    """
    if isinstance(model_or_spec, ArchSpec):
        spec = at_resolution(model_or_spec, resolution)
        model: nn.Module = build_model(spec)
        size, channels, names = spec.resolution, spec.in_channels, _spec_layer_names(spec)
    elif isinstance(model_or_spec, Network):
        spec = at_resolution(model_or_spec.spec, resolution)
        model = model_or_spec
        size, channels, names = spec.resolution, spec.in_channels, _spec_layer_names(spec)
    elif isinstance(model_or_spec, nn.Module):
        if resolution is None:
            raise ValueError(
                f"count({type(model_or_spec).__name__}): resolution is required for a module that is not "
                "built from an ArchSpec (the input is 1 x in_channels x resolution x resolution)"
            )
        _check_positive(resolution, "resolution")
        _check_positive(in_channels, "in_channels")
        model, size, channels = model_or_spec, resolution, in_channels
        names = [name for name, _ in model.named_children()]
    else:
        raise TypeError(f"count() takes an ArchSpec or an nn.Module, got {type(model_or_spec).__name__}")

    macs_by_module = _fvcore_macs(model, size, channels)
    per_layer = [LayerCost(name, _params(model.get_submodule(name)), macs_by_module.get(name, 0)) for name in names]
    params, macs = _params(model), macs_by_module.get("", 0)
    rest_params = params - sum(layer.params for layer in per_layer)
    rest_macs = macs - sum(layer.macs for layer in per_layer)
    if rest_params or rest_macs or not per_layer:
        per_layer.append(LayerCost("", rest_params, rest_macs))
    logger.debug("counted %s at %d: %d params, %d MACs", type(model).__name__, size, params, macs)
    return Cost(params=params, macs=macs, per_layer=tuple(per_layer))


def _check_positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _spec_layer_names(spec: ArchSpec) -> list[str]:
    return [layer.name for layer in layer_shapes(spec)]


def _params(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _fvcore_macs(model: nn.Module, size: int, channels: int) -> dict[str, int]:
    """MACs per module name ("" = the whole model) from one traced forward pass of zeros."""
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    inputs = torch.zeros(1, channels, size, size, device=device, dtype=dtype)
    flop_count_analysis, handles = _fvcore()
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        analysis = flop_count_analysis(model, inputs).clear_op_handles()
        analysis.set_op_handle(**handles)
        analysis.set_op_handle(**dict.fromkeys(_NOT_MACS))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with torch.no_grad():
            counts = {name: int(value) for name, value in analysis.by_module().items()}
        unsupported = analysis.unsupported_ops()
        if unsupported:
            logger.debug("ops not counted as MACs: %s", dict(unsupported))
    finally:
        for module, training in modes:
            module.training = training
    return counts


def _fvcore() -> tuple[Any, dict[str, Any]]:
    """fvcore, imported on first use: its import scripts functions with torch.jit (work, and a
    deprecation warning on recent torch that is not ours to act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis, jit_handles
    return FlopCountAnalysis, {op: getattr(jit_handles, handle) for op, handle in _MAC_OPS.items()}
