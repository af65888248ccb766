"""Int8 GhostNet blocks: the ghost module's concat and the bottleneck's residual add on int8 grids
(issue #16), so ONNX Runtime runs every ghost conv as QLinearConv.

A ghost module (Han et al., CVPR 2020) concatenates a 1x1 conv's output with a depthwise conv of
that output. With layer inputs quantized only, neither conv feeds a QuantizeLinear alone (the
primary conv also feeds the float concat; the cheap conv feeds nothing else), so ORT keeps both
float and dequantizes their weights (15 of GhostNet's 94 convs were int8). Here
(:func:`add_ghost_points`, called by ``compress.quantize_graph.add_int8_points``):

- :class:`Int8GhostModule` (a class swap: same modules and state-dict keys, plus ``output_quant``)
  puts both halves on **one grid**, ``output_quant``, observed over both halves. The cheap conv
  reads the primary half on that grid, so its input quantizer becomes a :class:`SharedQuantizer`
  of it; the concat's output is quantized again with the same grid (an identity on values that
  are already on it), which gives ORT the DQ, DQ -> Concat -> Q it fuses into QLinearConcat --
  equal scales make that a copy, no requantization table;
- the module's consumers (the strided depthwise conv or the next ghost module's primary conv) read
  it through a :class:`SharedQuantizer` as well, so the exporter's DQ -> Q pair between them has
  equal parameters and ``quantize_onnx.int8_graph`` drops it;
- :class:`Int8GhostBottleneck` adds ``project + Q_first(x)`` (``Q_first``: the expand module's
  primary conv's input quantizer applied without observing, as ``Int8ResidualMBConv`` does); a conv
  shortcut's depthwise conv shares that grid and its 1x1 conv gets an output quantizer, so both add
  inputs come from DQ and the add's consumers quantize its output: QLinearAdd;
- a strided depthwise conv followed by SE gets an output quantizer (SE reads an int8 tensor).

The fake-quant model computes the same grids as the int8 graph; the one difference from ORT is
the usual float-summation order before rounding (``compress.quantize_export``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from compress.quantize_ops import QUANT_TYPES, ActivationQuantizer
from search_spaces.blocks import GhostBottleneck, GhostModule, SqueezeExcite

__all__ = ["Int8GhostBottleneck", "Int8GhostModule", "SharedQuantizer", "add_ghost_points", "ghost_point_quantizers"]


class SharedQuantizer(ActivationQuantizer):
    """A layer's input quantizer that uses another quantizer's grid: the tensor it quantizes is
    already on that grid, so the export's DQ -> Q pair is an identity. The source is held as a
    plain attribute, not a submodule: its buffers are saved once, by their owner. It still observes
    its own input (this module keeps the replaced quantizer's buffers), so a layer later set to other
    bits than its source (``apply_policy`` on a quantized model) quantizes on a range of its own."""

    def __init__(self, source: ActivationQuantizer, name: str = "") -> None:
        super().__init__(source.bits, source.momentum, name=name)
        object.__setattr__(self, "source", source)

    def shared(self) -> bool:
        return self.bits == self.source.bits and self.scheme == self.source.scheme == "linear"

    def qparams(self) -> tuple[Tensor, Tensor]:
        if not self.shared():
            return super().qparams()
        return self.source.frozen if self.source.frozen is not None else self.source.qparams()

    def forward(self, x: Tensor) -> Tensor:
        if not self.shared():
            return super().forward(x)
        if self.enabled and (self.training or self.observing):
            self.observe(x)
        elif self.enabled and not bool(self.source.initialized):
            raise RuntimeError(f"quantizer {self.layer_name!r} shares the grid of {self.source.layer_name!r}, "
                               "which has no range: calibrate() the model first")
        return self.quantize_only(x)

    def extra_repr(self) -> str:
        return f"shares={self.source.layer_name!r}"


def _share(layer: nn.Module, source: ActivationQuantizer, name: str) -> None:
    if not isinstance(layer.input_quant, SharedQuantizer):
        shared = SharedQuantizer(source, name).to(source.min_val.device)
        shared.load_state_dict(layer.input_quant.state_dict())  # a calibrated layer keeps its own range
        layer.input_quant = shared


class Int8GhostModule(GhostModule):
    """A ghost module whose two halves and output share one 8-bit grid (module docstring)."""

    output_quant: ActivationQuantizer

    @torch.no_grad()
    def _observe(self, primary: Tensor) -> None:
        # the range covers both halves; the cheap half depends on the grid, so a first batch gets
        # a provisional grid from the primary half alone (calibration and QAT only). With BN left
        # unfolded, this extra pass also moves the cheap BN's running statistics during QAT.
        grid = self.output_quant
        provisional = not bool(grid.initialized)
        if provisional:
            grid.observe(primary)
        cheap = self.cheap(grid.quantize_only(primary))
        if provisional:
            grid.initialized.fill_(False)
        grid.observe(torch.stack((torch.minimum(primary.min(), cheap.min()), torch.maximum(primary.max(), cheap.max()))))

    def forward(self, x: Tensor) -> Tensor:
        grid = self.output_quant
        if not grid.enabled:
            return super().forward(x)
        primary = self.primary(x)
        if (grid.training or grid.observing) and grid.frozen is None:
            self._observe(primary)
        elif not bool(grid.initialized):
            raise RuntimeError(f"ghost module output {grid.layer_name!r} has no range: calibrate() the model first")
        primary = grid.quantize_only(primary)
        out = torch.cat((primary, grid.quantize_only(self.cheap(primary))), dim=1)
        if out.shape[1] != self.out_channels:
            out = out[:, : self.out_channels]
        return grid.quantize_only(out)  # the Q after the concat: ORT's QLinearConcat


class Int8GhostBottleneck(GhostBottleneck):
    """A ghost bottleneck whose residual add reads two int8 tensors (module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if not isinstance(self.shortcut, nn.Identity):
            return out + self.shortcut(x)
        first = self.expand.primary[0].input_quant
        return out + first.quantize_only(x)


def _is_int8(layer: nn.Module) -> bool:
    return isinstance(layer, QUANT_TYPES) and layer.activation_bits == 8 and layer.input_quant.scheme == "linear"


def _ghost_is_int8(module: nn.Module) -> bool:
    return isinstance(module, GhostModule) and _is_int8(module.primary[0]) and _is_int8(module.cheap[0])


def _swap_ghost(module: GhostModule, path: str) -> None:
    if isinstance(module, Int8GhostModule):
        return
    primary = module.primary[0]
    module.output_quant = ActivationQuantizer(8, primary.input_quant.momentum, name=f"{path} output")
    module.output_quant.to(primary.weight.device)
    module.__class__ = Int8GhostModule
    _share(module.cheap[0], module.output_quant, f"{path}.cheap.0")


def add_ghost_points(model: nn.Module, quantize_output: Callable[[nn.Sequential, str], bool]) -> int:
    """Swap int8 ghost modules and bottlenecks in place (module docstring); ``quantize_output`` puts
    an output quantizer at the end of a ConvBNAct (``quantize_graph``'s). Returns how many new
    observing quantizers were added."""
    added = 0
    for path, block in list(model.named_modules()):
        if not isinstance(block, GhostBottleneck):
            continue
        for key in ("expand", "project"):
            if _ghost_is_int8(getattr(block, key)):
                _swap_ghost(getattr(block, key), f"{path}.{key}")
                added += 1
        expand, project = block.expand, block.project
        depthwise = block.depthwise[0] if isinstance(block.depthwise, nn.Sequential) else None
        if isinstance(expand, Int8GhostModule):
            reader = depthwise if depthwise is not None else None if isinstance(block.se, SqueezeExcite) else project.primary[0]
            if reader is not None and _is_int8(reader):
                _share(reader, expand.output_quant, f"{path} reader of expand")
        if depthwise is not None and _is_int8(depthwise) and isinstance(block.se, SqueezeExcite):
            added += quantize_output(block.depthwise, f"{path}.depthwise")
        if isinstance(expand, Int8GhostModule) and isinstance(project, Int8GhostModule) and not isinstance(block, Int8GhostBottleneck):
            if isinstance(block.shortcut, nn.Identity):
                block.__class__ = Int8GhostBottleneck
            elif _is_int8(block.shortcut[0][0]) and _is_int8(block.shortcut[1][0]):
                _share(block.shortcut[0][0], expand.primary[0].input_quant, f"{path}.shortcut.0.0")
                added += quantize_output(block.shortcut[1], f"{path}.shortcut.1")
                block.__class__ = Int8GhostBottleneck
    return added


def ghost_point_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    """The ghost modules' shared output grids (observing quantizers :func:`add_ghost_points` added)."""
    return [m.output_quant for m in model.modules() if isinstance(m, Int8GhostModule)]
