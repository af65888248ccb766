"""Resource models for mixed-precision policies: model size in bits, and a bit-level accelerator
cost in the spirit of BitFusion (Sharma et al., ISCA 2018) as HAQ uses for its latency budgets.

**Model size** (:func:`policy_weight_bits`): over every Conv2d/Linear layer,
``weight elements * weight bits + bias elements * 32``. Bits per weight: the policy's
(binary = 1, ternary = 2, see ``effective_bits``); layers the policy does not name count as
float32 (32). Bias elements are the layer's own bias or, for a conv followed by BatchNorm, the
``out_channels`` bias that folding BN creates -- the same count whether or not BN is already
folded. Biases stay 32-bit because int8 deployments keep them in the int32 accumulator format
(gemmlowp, TFLite, ONNX QLinearConv). BN parameters are not counted separately: they fold away.

**Accelerator cost** (:func:`bitfusion_cost`), in *cycles of an idealised bit-flexible
accelerator* -- relative units for comparing policies, **not milliseconds** on any real device:

    cycles(layer) = MACs * ceil(w/2) * ceil(a/2) / (BITBRICKS_PER_FUSION_UNIT * FUSION_UNITS)
                  + (weight_bits + bias_bits + input_activation_bits) / MEMORY_BITS_PER_CYCLE

- compute: BitFusion multiplies with 2x2-bit BitBricks; a w-bit x a-bit multiply-add occupies
  ``ceil(w/2) * ceil(a/2)`` bricks (16 for 8x8, 4 for 4x4, 1 for 2x2; binary and ternary weights
  take one brick column). Real BitFusion fuses bricks in powers of two (a 3-bit operand runs in
  4-bit mode); we keep the 2-bit granularity so every step of the search changes the cost.
- memory: every weight, bias and input activation crosses the memory interface once per inference
  (no on-chip reuse across layers), at its stored bit-width.
- constants (our assumptions, not BitFusion's published configuration): ``FUSION_UNITS = 512``
  (512 8x8 MACs per cycle), ``MEMORY_BITS_PER_CYCLE = 256`` (32 bytes per cycle). With them both
  terms matter, as on HAQ's edge accelerator: MobileNetV2 at 224x224 and 8 bits costs 587k compute
  + 322k memory cycles; at 4 bits 147k + 162k (memory-bound, like its depthwise layers).
- layers a policy does not name run at 16 x 16 bits (BitFusion's widest mode).

Per-layer shapes (MACs, feature-map sizes, activation counts) come from one forward pass at batch
1 with hooks (:func:`layer_infos`); the MACs follow ``predictors.cost``'s convention (one per
multiply-accumulate of convs and linear layers, biases excluded) and sum to its total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compress.quantize import (
    conv_bn_pairs,
    current_policy,
    quant_layers,
    quantization_disabled,
)
from compress.quantize_policy import QuantPolicy, effective_bits, quantizable_layers

__all__ = [
    "BIAS_BITS",
    "BITBRICKS_PER_FUSION_UNIT",
    "FLOAT_BITS",
    "FUSION_UNITS",
    "MEMORY_BITS_PER_CYCLE",
    "UNQUANTIZED_ACCELERATOR_BITS",
    "LayerInfo",
    "bitfusion_cost",
    "layer_infos",
    "policy_weight_bits",
]

FLOAT_BITS = 32
BIAS_BITS = 32
BITBRICKS_PER_FUSION_UNIT = 16  # 4x4 bricks of 2x2 bits: one 8x8 multiply per unit per cycle
FUSION_UNITS = 512
MEMORY_BITS_PER_CYCLE = 256
UNQUANTIZED_ACCELERATOR_BITS = 16


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One conv/linear layer as the cost models and HAQ's state features see it (batch 1)."""

    name: str
    kind: str  # "conv" | "linear"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_size: int  # input feature-map height (1 for linear)
    out_size: int
    weight_params: int
    bias_params: int  # own bias, or the one BN folding creates
    macs: int
    input_elements: int

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def to_dict(self) -> dict:
        return {**asdict(self), "depthwise": self.depthwise}


def _bias_counts(model: nn.Module) -> dict[str, int]:
    with_bn = {conv for conv, _ in conv_bn_pairs(model)}
    counts = {}
    for name, layer in quantizable_layers(model).items():
        own = layer.bias.numel() if layer.bias is not None else 0
        width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        counts[name] = width if name in with_bn and own == 0 else own
    return counts


@torch.no_grad()
def layer_infos(model: nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Every conv/linear layer that runs in a forward pass of ``zeros(input_shape)`` (batch forced
    to 1), in execution order (HAQ's layer index). The model is not modified: hooks are removed
    and the train/eval flag restored; quantizers are bypassed, so it works before calibration."""
    shape = (1, *tuple(input_shape)[1:])
    layers = quantizable_layers(model)
    biases = _bias_counts(model)
    seen: dict[str, LayerInfo] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in seen:
                return  # a layer applied twice is costed once, at its first use
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                kernel = module.kernel_size[0] * module.kernel_size[1]
                macs = output.numel() * (module.in_channels // module.groups) * kernel
                seen[name] = LayerInfo(name, "conv", module.in_channels, module.out_channels,
                                       module.kernel_size[0], module.stride[0], module.groups, x.shape[-1],
                                       output.shape[-1], module.weight.numel(), biases[name], macs, x.numel())
            else:
                macs = output.numel() * module.in_features
                seen[name] = LayerInfo(name, "linear", module.in_features, module.out_features, 1, 1, 1, 1, 1,
                                       module.weight.numel(), biases[name], macs, x.numel())
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    was_training = model.training
    try:
        device = next(model.parameters()).device
        with quantization_disabled(model):
            model.eval()(torch.zeros(shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return list(seen.values())


def _policy_or_current(model: nn.Module, policy: QuantPolicy | None) -> QuantPolicy:
    if policy is not None:
        policy.check_model(model)
        return policy
    return current_policy(model) if quant_layers(model) else QuantPolicy({})


def policy_weight_bits(model: nn.Module, policy: QuantPolicy | None = None) -> int:
    """Model size in bits under ``policy`` (default: the bits a quantized model carries); see the
    module docstring for what is counted."""
    policy = _policy_or_current(model, policy)
    biases = _bias_counts(model)
    total = 0
    for name, layer in quantizable_layers(model).items():
        bits = effective_bits(policy.layers[name].weight_bits) if name in policy.layers else FLOAT_BITS
        total += layer.weight.numel() * bits + biases[name] * BIAS_BITS
    return total


@dataclass(frozen=True, slots=True)
class CostReport:
    """Accelerator cycles (relative units, not ms), total and per layer."""

    cycles: float
    compute_cycles: float
    memory_cycles: float
    per_layer: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def bitfusion_cost(layers: Sequence[LayerInfo], policy: QuantPolicy) -> CostReport:
    """Cycles of the idealised BitFusion-like accelerator for ``policy`` over ``layers`` (from
    :func:`layer_infos`); the formula and constants are in the module docstring."""
    compute = memory = 0.0
    per_layer = {}
    for layer in layers:
        if layer.name in policy.layers:
            weight_bits = effective_bits(policy.layers[layer.name].weight_bits)
            activation_bits = policy.layers[layer.name].activation_bits
        else:
            weight_bits = activation_bits = UNQUANTIZED_ACCELERATOR_BITS
        bricks = math.ceil(weight_bits / 2) * math.ceil(activation_bits / 2)
        layer_compute = layer.macs * bricks / (BITBRICKS_PER_FUSION_UNIT * FUSION_UNITS)
        bits_moved = (layer.weight_params * weight_bits + layer.bias_params * BIAS_BITS
                      + layer.input_elements * activation_bits)
        layer_memory = bits_moved / MEMORY_BITS_PER_CYCLE
        per_layer[layer.name] = layer_compute + layer_memory
        compute += layer_compute
        memory += layer_memory
    return CostReport(compute + memory, compute, memory, per_layer)
