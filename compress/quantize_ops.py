"""Linear fake quantization with a straight-through estimator (HAQ, Wang et al., CVPR 2019).

Each quantized layer quantizes its *weights* and its *input activation* (HAQ's per-layer pair):

- **weights**, ``b`` in 2..8: symmetric, per output channel (dim 0),
  ``scale_c = max|w_c| / (2^(b-1) - 1)``, ``w_q = clamp(round(w / scale_c)) * scale_c``. The grid
  is symmetric (the most negative code, -2^(b-1), is never produced), so 8-bit weights are int8
  with zero point 0 -- what ONNX Runtime's int8 kernels expect.
  **8-bit weights use 7-bit codes by default** (``reduce_range``, a per-layer flag, on unless
  ``apply_policy(..., reduce_range=False)``): ``scale_c = max|w_c| / 63``, codes in -63..63, still
  stored as int8. Reason: on x86 CPUs without VNNI (AVX2, AVX-512F/BW) ONNX Runtime's u8s8
  kernels multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds each pair of
  products in int16 *with saturation*; 255 * 127 * 2 = 64770 overflows 32767, 255 * 63 * 2 = 32130
  cannot. Measured on an AVX2 EPYC (tests' tiny model, ORT 1.32): full-range int8 weights differ
  from fake-quant by 2.3x the quantization error with all graph optimizations (QLinearConv) and by
  1e-8 with them disabled (float Conv on dequantized weights); 7-bit codes: 1e-8 with both. VNNI
  (``vpdpbusd``) and ARM (``sdot``/``udot``) accumulate in int32 and never saturate, so a full-range
  model is exact there but not portable: a file exported on a VNNI machine may be run on an AVX2
  one. The reduced grid is exact everywhere, at the cost of one bit of weight resolution (ORT's
  own ``quantize_static(reduce_range=True)`` advice for these CPUs). Only 8-bit layers are
  affected; 2..7-bit grids are simulations for cost models, not run on int8 kernels.
  ``"binary"``: ``sign(w) * mean|w_c|`` (BWN/XNOR-Net; w = 0 maps to +); ``"ternary"`` (TWN):
  threshold ``0.7 * mean|w_c|``, ``alpha_c`` = mean |w| above it, ``w_q in {-alpha_c, 0, alpha_c}``.
  ``"ttq"`` (``compress.quantize_ttq``): ``{-W_n, 0, +W_p}`` with two trainable per-layer scales,
  which live on the layer (``ttq_positive``, ``ttq_negative``), so it is the one weight scheme
  :func:`quantize_weight` cannot compute from the weight alone.
- **activations**, ``b`` in 2..8: asymmetric per tensor, unsigned codes 0..2^b - 1. An observer
  tracks the input's min and max with an exponential moving average (``momentum``) while the
  layer is training or being calibrated; the range is widened to include 0 (so zero -- padding,
  ReLU's output -- is exact), ``scale = (max - min) / (2^b - 1)``, ``zero_point = round(-min / scale)``.
  The range is stored, not the scale: changing a layer's bits keeps its calibration.
  ``scheme="dorefa"`` (``compress.quantize_dorefa``) instead clips to the fixed range [0, 1]:
  nothing to observe, and the grid is ``1 / (2^b - 1)`` with zero point 0.

Gradients: the rounding is a straight-through estimator. Linear modes use PyTorch's
``fake_quantize_per_{channel,tensor}_affine`` (gradient 1 where the code is inside
[quant_min, quant_max], 0 where it was clipped); binary/ternary pass the gradient through
unchanged. Scales get no gradient (they follow the weights / the observed range), except TTQ's
W_p / W_n, which are trained (``compress.quantize_ttq``).

These two torch ops are also what makes the export faithful: the TorchScript ONNX exporter turns
them into QuantizeLinear/DequantizeLinear pairs (opset >= 13, 8-bit ranges only); see
``compress.quantize_export``.

Biases are quantized too, as integer deployments store them: int32 at the accumulator's scale
``s_in * s_w[c]`` (zero point 0; binary/ternary use ``alpha_c`` as ``s_w[c]``), with a
straight-through gradient. Without this the export could not match: ONNX Runtime's
``BiasQuantization`` transform rounds every float bias of a QDQ conv to exactly that grid.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from compress.quantize_dorefa import dorefa_activation, dorefa_scale
from compress.quantize_policy import PolicyError, WeightBits
from compress.quantize_ttq import TTQ_THRESHOLD, add_ttq_scales, remove_ttq_scales, ttq_weight

__all__ = [
    "QUANT_TYPES",
    "ActivationQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "activation_qparams",
    "fake_quant_activation",
    "fake_quant_weight",
    "quantize_bias",
    "quantize_weight",
    "weight_levels",
    "weight_scale",
]

_Q = TypeVar("_Q", bound=nn.Module)

EPS = 1e-8  # smallest scale: a constant-zero tensor still quantizes (to zero) without dividing by 0
TWN_THRESHOLD = 0.7  # Li & Liu, "Ternary Weight Networks": delta = 0.7 * E|w|
INT8_KERNEL_LEVELS = 63  # largest 8-bit weight code with reduce_range: no int16 saturation on u8s8 kernels


class _StraightThrough(torch.autograd.Function):
    """Forward the quantized value exactly; pass the gradient to the float weight unchanged.
    (``w + (q - w).detach()`` would not reproduce ``q`` bit for bit.)"""

    @staticmethod
    def forward(ctx: object, weight: Tensor, quantized: Tensor) -> Tensor:
        return quantized

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _channel_mean_abs(weight: Tensor) -> Tensor:
    return weight.abs().flatten(1).mean(1).view(-1, *([1] * (weight.dim() - 1)))


def weight_levels(bits: int, reduce_range: bool = False) -> int:
    """The largest weight code: ``2^(bits-1) - 1``, or 63 for 8 bits with ``reduce_range``."""
    return INT8_KERNEL_LEVELS if reduce_range and bits == 8 else 2 ** (bits - 1) - 1


def weight_scale(weight: Tensor, bits: int, reduce_range: bool = False) -> Tensor:
    """Per-output-channel step ``max|w_c| / weight_levels(bits, reduce_range)`` (1-D, float32, no gradient)."""
    levels = weight_levels(bits, reduce_range)
    return (weight.detach().abs().flatten(1).amax(1) / levels).clamp_min(EPS).float()


def fake_quant_weight(weight: Tensor, bits: WeightBits, reduce_range: bool = False) -> Tensor:
    """The weight on its quantization grid (same shape and dtype), straight-through gradient."""
    return quantize_weight(weight, bits, reduce_range)[0]


def quantize_weight(weight: Tensor, bits: WeightBits, reduce_range: bool = False) -> tuple[Tensor, Tensor]:
    """(weight on its grid, the per-channel step (1-D): the scale, or alpha for binary/ternary)."""
    if bits == "ttq":
        raise ValueError("ttq weights need the layer's learned scales: use QuantConv2d/QuantLinear.quantized_weight()")
    if bits == "binary":
        alpha = _channel_mean_abs(weight.detach())
        return _StraightThrough.apply(weight, torch.where(weight.detach() >= 0, alpha, -alpha)), alpha.flatten()
    if bits == "ternary":
        w = weight.detach()
        mask = (w.abs() > TWN_THRESHOLD * _channel_mean_abs(w)).to(w.dtype)
        kept = mask.flatten(1).sum(1).clamp_min(1)
        alpha = ((w.abs() * mask).flatten(1).sum(1) / kept).view_as(_channel_mean_abs(w))
        return _StraightThrough.apply(weight, torch.sign(w) * mask * alpha), alpha.flatten()
    scale = weight_scale(weight, bits, reduce_range)
    return _fake_quant_weight_with(weight, scale, bits), scale


def quantize_bias(bias: Tensor, input_scale: Tensor, weight_step: Tensor) -> Tensor:
    """The bias on the int32 accumulator grid ``input_scale * weight_step[c]`` (STE gradient)."""
    step = (input_scale * weight_step).to(bias.dtype)
    return _StraightThrough.apply(bias, torch.round(bias.detach() / step) * step)


def _fake_quant_weight_with(weight: Tensor, scale: Tensor, bits: int) -> Tensor:
    zero = torch.zeros_like(scale, dtype=torch.int32)
    # quant range -2^(b-1)..2^(b-1)-1 is the signed int range (the only one ONNX accepts at 8
    # bits); the scale above keeps every code within +-weight_levels(b), so the grid is symmetric
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def activation_qparams(min_val: Tensor, max_val: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(scale float32 scalar, zero_point int32 scalar) of an unsigned ``bits`` range covering
    [min, max] and 0."""
    low, high = min_val.clamp(max=0.0), max_val.clamp(min=0.0)
    top = 2**bits - 1
    scale = ((high - low) / top).clamp_min(EPS).float()
    zero_point = torch.round(-low / scale).clamp(0, top).to(torch.int32)
    return scale, zero_point


def fake_quant_activation(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Asymmetric per-tensor fake quantization to codes 0..2^bits - 1 (STE: gradient 1 inside
    the range, 0 where clipped)."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 2**bits - 1)


class ActivationQuantizer(nn.Module):
    """EMA min/max observer + asymmetric fake quantizer for one layer's input.

    Observes while ``self.training`` (QAT) or inside :func:`calibrate`; the first observation sets
    the range, later ones move it by ``momentum``: ``min <- (1 - m) * min + m * batch_min``.
    In eval mode an uncalibrated quantizer raises (a silently unquantized layer would make every
    accuracy in a search wrong).
    """

    def __init__(self, bits: int, momentum: float = 0.1, name: str = "", scheme: str = "linear") -> None:
        super().__init__()
        self.bits, self.momentum, self.layer_name = bits, momentum, name
        self.scheme = scheme  # "linear" (observed range) or "dorefa" (fixed [0, 1])
        self.observing = False
        self.enabled = True
        self.frozen: tuple[Tensor, Tensor] | None = None
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if not bool(self.initialized):
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(low, self.momentum)
            self.max_val.lerp_(high, self.momentum)

    def qparams(self) -> tuple[Tensor, Tensor]:
        if self.scheme == "dorefa":
            return dorefa_scale(self.bits).to(self.min_val.device), torch.zeros((), dtype=torch.int32)
        return activation_qparams(self.min_val, self.max_val, self.bits)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.scheme == "dorefa":
            return dorefa_activation(x, self.bits)
        if self.training or self.observing:
            self.observe(x)
        elif not bool(self.initialized):
            raise RuntimeError(
                f"activation quantizer of layer {self.layer_name!r} has no range: run "
                "compress.quantize.calibrate(model, batches) (or QAT in train mode) before evaluating"
            )
        scale, zero_point = self.frozen if self.frozen is not None else self.qparams()
        return fake_quant_activation(x, scale, zero_point, self.bits)

    def quantize_only(self, x: Tensor) -> Tensor:
        """``x`` on this quantizer's current grid, without observing: a second consumer of the
        tensor this quantizer quantizes sees the same codes (``compress.quantize_graph``)."""
        if not self.enabled:
            return x
        if self.scheme == "dorefa":
            return dorefa_activation(x, self.bits)
        scale, zero_point = self.frozen if self.frozen is not None else self.qparams()
        return fake_quant_activation(x, scale, zero_point, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}" + (", scheme=dorefa" if self.scheme == "dorefa" else "")


class _QuantMixin:
    """Shared by QuantConv2d/QuantLinear: bits, the input quantizer, an off switch."""

    weight: nn.Parameter
    input_quant: ActivationQuantizer
    weight_bits: WeightBits
    quant_enabled: bool

    def _setup(self, weight_bits: WeightBits, activation_bits: int, name: str, ttq_threshold: float) -> None:
        self.weight_bits, self.quant_enabled = weight_bits, True
        self._sync_ttq(ttq_threshold)
        self.reduce_range = True  # 8-bit weights on 7-bit codes: exact on every CPU's int8 kernels (module docstring)
        self.input_quant = ActivationQuantizer(activation_bits, name=name)
        # set by compress.quantize.frozen_qparams for export: constants instead of traced math
        self.frozen_weight_scale: Tensor | None = None
        self.frozen_bias: Tensor | None = None

    @property
    def activation_bits(self) -> int:
        return self.input_quant.bits

    def set_bits(self, weight_bits: WeightBits, activation_bits: int, ttq_threshold: float = TTQ_THRESHOLD) -> None:
        self.weight_bits, self.input_quant.bits = weight_bits, activation_bits
        self._sync_ttq(ttq_threshold)

    def _sync_ttq(self, ttq_threshold: float) -> None:
        # the learned scales exist exactly while the layer is TTQ (state-dict keys follow the policy)
        if self.weight_bits == "ttq":
            add_ttq_scales(self, ttq_threshold)
        else:
            remove_ttq_scales(self)

    def quantized_parameters(self) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) as the layer computes with them; call after its input was quantized
        (the bias grid needs the input scale)."""
        if not self.quant_enabled:
            return self.weight, self.bias
        if self.frozen_weight_scale is not None and isinstance(self.weight_bits, int):
            weight = _fake_quant_weight_with(self.weight, self.frozen_weight_scale, self.weight_bits)
            return weight, self.frozen_bias if self.frozen_bias is not None else self.bias
        if self.weight_bits == "ttq":
            # two scales, so no single accumulator step to put an integer bias on: the bias stays float
            return ttq_weight(self.weight, self.ttq_positive, self.ttq_negative, self.ttq_threshold), self.bias
        weight, step = quantize_weight(self.weight, self.weight_bits, self.reduce_range)
        if self.bias is None or not self.input_quant.enabled:
            return weight, self.bias
        input_scale = self.input_quant.frozen[0] if self.input_quant.frozen is not None else self.input_quant.qparams()[0]
        return weight, quantize_bias(self.bias, input_scale, step)

    def quantized_weight(self) -> Tensor:
        return self.quantized_parameters()[0]


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """A Conv2d whose weight and input are fake-quantized. Built from a float conv by
    :meth:`from_float`, sharing its parameters, so module paths and state-dict keys of the weight
    and bias are unchanged (the quantizer adds ``<name>.input_quant.*`` buffers)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_bits: WeightBits, activation_bits: int, name: str = "",
                   ttq_threshold: float = TTQ_THRESHOLD) -> QuantConv2d:
        if conv.padding_mode != "zeros":
            raise PolicyError(f"layer {name!r}: padding_mode={conv.padding_mode!r}; only 'zeros' is supported")
        args = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None)
        return _adopt(skip_init(cls, *args, device=conv.weight.device, dtype=conv.weight.dtype), conv,
                      weight_bits, activation_bits, name, ttq_threshold)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quant(x) if self.quant_enabled else x
        return self._conv_forward(x, *self.quantized_parameters())


class QuantLinear(_QuantMixin, nn.Linear):
    """A Linear whose weight (per output row) and input are fake-quantized; see QuantConv2d."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_bits: WeightBits, activation_bits: int, name: str = "",
                   ttq_threshold: float = TTQ_THRESHOLD) -> QuantLinear:
        args = (linear.in_features, linear.out_features, linear.bias is not None)
        return _adopt(skip_init(cls, *args, device=linear.weight.device, dtype=linear.weight.dtype), linear,
                      weight_bits, activation_bits, name, ttq_threshold)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quant(x) if self.quant_enabled else x
        return F.linear(x, *self.quantized_parameters())


QUANT_TYPES = (QuantConv2d, QuantLinear)


def _adopt(new: _Q, old: nn.Module, weight_bits: WeightBits, activation_bits: int, name: str,
           ttq_threshold: float = TTQ_THRESHOLD) -> _Q:
    """Give ``new`` (built with skip_init: no allocation, no global RNG use) the float layer's own
    parameters, so optimisers and state-dict keys see the same tensors."""
    new.weight, new.bias = old.weight, old.bias
    new._setup(weight_bits, activation_bits, name, ttq_threshold)
    new.input_quant.to(old.weight.device)
    return new.train(old.training)


