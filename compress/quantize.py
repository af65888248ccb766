"""Applying a `QuantPolicy` to a model: BN folding, QuantConv2d/QuantLinear in place of the
named layers, activation calibration, QAT preparation (the quantizers are in ``quantize_ops``,
re-exported here so ``compress.quantize`` is the one import a caller needs).

Batch norm (``apply_policy(..., fold_batchnorm=...)``):

- ``True`` (default): every conv directly followed by a BatchNorm2d in an ``nn.Sequential`` (our
  ``ConvBNAct``) absorbs it (running statistics, eval mode) before quantization; the BN becomes
  ``nn.Identity``. The quantized weight is then the deployed one, and the exported graph is
  Conv(+bias) -> act, which ONNX Runtime fuses into int8 kernels. QAT then trains the folded
  conv without BN -- fine for HAQ's short fine-tunes at a small learning rate.
- ``False``: BN stays a float layer after the quantized conv (QAT with live BN statistics). The
  ONNX export still matches (BN is a float op in both), but the int8 weights are the pre-BN ones,
  which is not what an integer-only accelerator would run.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compress.quantize_ops import (
    QUANT_TYPES,
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    fake_quant_activation,
    fake_quant_weight,
    weight_scale,
)
from compress.quantize_graph import add_int8_points
from compress.quantize_policy import QuantPolicy

__all__ = [
    "ActivationQuantizer", "QuantConv2d", "QuantLinear", "activation_qparams", "apply_policy", "calibrate",
    "conv_bn_pairs", "current_policy", "fake_quant_activation", "fake_quant_weight", "fold_conv_batchnorm",
    "frozen_qparams", "prepare_qat", "quant_layers", "quantization_disabled", "weight_scale",
]

logger = logging.getLogger(__name__)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv path, bn path) for each Conv2d immediately followed by a BatchNorm2d of matching
    width inside an ``nn.Sequential`` -- the only place where "followed by" is structural."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (conv_key, conv), (bn_key, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + conv_key, prefix + bn_key))
    return pairs


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, key = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, key, module)


def fold_conv_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every float conv->BN pair in place (BN's running statistics into the conv's weight and
    bias; the BN becomes ``nn.Identity``) and return ``model``. Valid for inference statistics
    only. Already-quantized convs are skipped: their grid was set on the unfolded weight."""
    for conv_path, bn_path in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
        if isinstance(conv, QUANT_TYPES):
            logger.debug("not folding %s into quantized %s", bn_path, conv_path)
            continue
        training = conv.training
        _set_module(model, conv_path, fuse_conv_bn_eval(conv.eval(), bn.eval()).train(training))
        _set_module(model, bn_path, nn.Identity())
    return model


def quant_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def apply_policy(model: nn.Module, policy: QuantPolicy, *, fold_batchnorm: bool = True,
                 momentum: float = 0.1, reduce_range: bool = True, int8_points: bool = True) -> nn.Module:
    """A quantized **copy** of ``model`` (the argument is never modified): every layer the policy
    names becomes a QuantConv2d/QuantLinear with those bits; other layers stay float.

    On a model that is already quantized, named layers keep their calibration and only change
    bits. Activation ranges of new quantizers must be set by :func:`calibrate` or QAT before
    evaluation. ``fold_batchnorm``: see the module docstring. ``reduce_range`` (default): 8-bit
    weights on 7-bit codes, exact on every CPU's int8 kernels; False gives full-range int8, exact
    only on CPUs whose kernels accumulate in int32 (VNNI, ARM) -- see ``compress.quantize_ops``.
    ``int8_points`` (default): output quantizers where an 8-bit conv feeds a float op and int8
    residual adds, so the export runs on int8 kernels end to end (``compress.quantize_graph``).
    """
    if not isinstance(policy, QuantPolicy):
        raise TypeError(f"policy: expected a QuantPolicy, got {type(policy).__name__}")
    result = copy.deepcopy(model)
    policy.check_model(result)  # before folding: names refer to the caller's model
    if fold_batchnorm:
        fold_conv_batchnorm(result)
    threshold = policy.ttq_threshold
    for name, (weight_bits, activation_bits) in policy.layers.items():
        layer = result.get_submodule(name)
        if isinstance(layer, QUANT_TYPES):
            layer.set_bits(weight_bits, activation_bits, threshold)
        elif isinstance(layer, nn.Conv2d):
            _set_module(result, name, QuantConv2d.from_float(layer, weight_bits, activation_bits, name, threshold))
        else:
            _set_module(result, name, QuantLinear.from_float(layer, weight_bits, activation_bits, name, threshold))
        result.get_submodule(name).input_quant.momentum = momentum
        result.get_submodule(name).input_quant.scheme = policy.activation_scheme(name)
        result.get_submodule(name).reduce_range = reduce_range
    if int8_points:
        add_int8_points(result)
    logger.debug("applied policy to %d layers: %s", len(policy), policy.bits_string())
    return result


def current_policy(model: nn.Module) -> QuantPolicy:
    """The policy a quantized model carries (its QuantConv2d/QuantLinear layers' bits, TTQ threshold
    and DoReFa layers)."""
    layers = quant_layers(model)
    thresholds = {m.ttq_threshold for m in layers.values() if m.weight_bits == "ttq"}
    dorefa = {name: "dorefa" for name, m in layers.items() if m.input_quant.scheme == "dorefa"}
    return QuantPolicy({name: (m.weight_bits, m.activation_bits) for name, m in layers.items()},
                       **({"ttq_threshold": thresholds.pop()} if len(thresholds) == 1 else {}),
                       activation_quantizer=dorefa)


def prepare_qat(model: nn.Module, policy: QuantPolicy, *, fold_batchnorm: bool = True,
                calibration: Iterable[Tensor] | None = None) -> nn.Module:
    """A quantized copy ready for quantization-aware training (train mode; observers update with
    the EMA as it trains). ``calibration`` batches, when given, set the ranges first so the first
    steps do not see ranges from one batch. Train it with ``nas.training.train.train`` (optionally with
    ``teacher=model`` and ``compress.distill``'s loss); evaluate after ``.eval()``."""
    qmodel = apply_policy(model, policy, fold_batchnorm=fold_batchnorm)
    if calibration is not None:
        calibrate(qmodel, calibration)
    return qmodel.train()


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Observe activation ranges on ``batches`` (input tensors, or (input, label) pairs) in eval
    mode (BN statistics and dropout untouched). Returns ``model`` with its train/eval flag
    restored. Existing ranges are updated by the EMA; pass a fresh model for a fresh range."""
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    if not quantizers:
        raise ValueError("calibrate(): the model has no quantized layers; apply_policy() first")
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for quantizer in quantizers:
            quantizer.observing = True
        device = next(model.parameters()).device
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
            seen += 1
    finally:
        for quantizer in quantizers:
            quantizer.observing = False
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibrate(): batches was empty; give at least one input batch")
    logger.debug("calibrated %d activation quantizers on %d batches", len(quantizers), seen)
    return model


@contextlib.contextmanager
def frozen_qparams(model: nn.Module) -> Iterator[nn.Module]:
    """Compute every scale and zero point once and use those tensors in forward.

    Numerically a no-op in eval mode; it exists for tracing: inside, the scales are tensors made
    outside the traced forward, so the ONNX exporter writes them as constants (QuantizeLinear /
    DequantizeLinear with initializer scales, which ONNX Runtime's int8 fusions require) instead
    of the Abs/ReduceMax/Div subgraph that recomputes them from the weights.
    """
    layers = list(quant_layers(model).values())
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    try:
        with torch.no_grad():
            for quantizer in quantizers:  # layer inputs and compress.quantize_graph's output points
                if bool(quantizer.initialized):
                    quantizer.frozen = quantizer.qparams()
            for layer in layers:
                if isinstance(layer.weight_bits, int) and bool(layer.input_quant.initialized):
                    _, bias = layer.quantized_parameters()  # needs the input scale: after the line above
                    layer.frozen_weight_scale = weight_scale(layer.weight, layer.weight_bits, layer.reduce_range)
                    layer.frozen_bias = None if bias is None else bias.detach().clone()
        yield model
    finally:
        for layer in layers:
            layer.frozen_weight_scale, layer.frozen_bias = None, None
        for quantizer in quantizers:
            quantizer.frozen = None


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the quantized model as its float self (e.g. to trace shapes before calibration)."""
    layers = list(quant_layers(model).values())
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    previous = [layer.quant_enabled for layer in layers]
    previous_quantizers = [quantizer.enabled for quantizer in quantizers]
    try:
        for layer in layers:
            layer.quant_enabled = False
        for quantizer in quantizers:
            quantizer.enabled = False
        yield model
    finally:
        for layer, state in zip(layers, previous):
            layer.quant_enabled = state
        for quantizer, state in zip(quantizers, previous_quantizers):
            quantizer.enabled = state
