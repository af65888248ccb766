"""Squeeze-excite on int8 kernels (issue #16): the pool, the gate's conv, the gate and the multiply.

``SqueezeExcite`` computes ``x * gate(expand(act(reduce(mean(x)))))``. With layer inputs quantized
only, the expand conv feeds the float gate (so ORT keeps it a float conv), the pool is a float
ReduceMean behind a DequantizeLinear of the whole block tensor, and the multiply has a float input.
:class:`Int8SqueezeExcite` (a class swap: same modules and state-dict keys, plus two quantizers):

- pools with ``adaptive_avg_pool2d`` (exported as GlobalAveragePool, not ReduceMean; the same
  mean): with ``x`` on a grid and the reduce conv's input quantizer after it, ORT fuses
  DQ -> GlobalAveragePool -> Q into QLinearGlobalAveragePool, which reads the int8 tensor;
- ``expand_quant`` after the expand conv: DQ -> Conv -> Q, fused into QLinearConv;
- ``gate_quant`` after the gate: a sigmoid becomes QLinearSigmoid (DQ -> Sigmoid -> Q); ORT has no
  int8 hard-sigmoid, so a hard gate stays float between a DQ and this Q (on C x 1 x 1 values);
- with ``x`` already on a grid (the block quantizes the tensor SE reads: MBConv's depthwise output,
  a ghost module's output) the multiply reads DQ, DQ and its consumer's input quantizer follows it:
  QLinearMul.

**Int8 by default** (:data:`INT8_SE`), chosen by measurement: MnasNet-A1 @ 224, ORT 1.32, 1 thread,
batch 1, AVX2 EPYC without VNNI, files timed interleaved (load average 6-11 on 2 cores): the int8
SE with the ReduceMean pool was 1-3 % faster than the float SE in 4 of 4 runs, and with the int8
pool 7 % faster than the float SE (37.3 vs 40.3 ms; fp32 39.8, ``quantize_static`` QDQ 38.3);
the file is smaller too (SE's expand weights int8, not dequantized float: GhostNet 5.6 vs 7.8 MB).
``add_int8_points(int8_se=False)`` keeps the float SE for comparison.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from compress.quantize_ops import QUANT_TYPES, ActivationQuantizer
from search_spaces.blocks import SqueezeExcite

__all__ = ["INT8_SE", "Int8SqueezeExcite", "add_se_points", "se_point_quantizers"]

INT8_SE = True  # the default of add_int8_points(int8_se=...): see the module docstring


class Int8SqueezeExcite(SqueezeExcite):
    """SE with its gate conv's output and its gate on 8-bit grids (module docstring)."""

    expand_quant: ActivationQuantizer
    gate_quant: ActivationQuantizer

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # exported as GlobalAveragePool: ORT's QLinearGlobalAveragePool
        return x * self.gate_quant(self.gate(self.expand_quant(self.expand(self.act(self.reduce(scale))))))


def _is_int8(layer: nn.Module) -> bool:
    return isinstance(layer, QUANT_TYPES) and layer.activation_bits == 8 and layer.input_quant.scheme == "linear"


def add_se_points(model: nn.Module) -> int:
    """Swap every SqueezeExcite whose two convs are 8-bit into :class:`Int8SqueezeExcite`, in
    place; returns how many quantizers were added."""
    added = 0
    for path, se in list(model.named_modules()):
        if type(se) is not SqueezeExcite or not (_is_int8(se.reduce) and _is_int8(se.expand)):
            continue
        momentum, device = se.expand.input_quant.momentum, se.expand.weight.device
        se.expand_quant = ActivationQuantizer(8, momentum, name=f"{path}.expand output").to(device)
        se.gate_quant = ActivationQuantizer(8, momentum, name=f"{path}.gate output").to(device)
        se.__class__ = Int8SqueezeExcite
        added += 2
    return added


def se_point_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [q for m in model.modules() if isinstance(m, Int8SqueezeExcite) for q in (m.expand_quant, m.gate_quant)]
