"""Quantization points between layers, so that an exported 8-bit model runs on int8 kernels
end to end (issue #16) instead of falling back to float around residual adds and pools.

``compress.quantize`` quantizes each layer's *input*. ONNX Runtime turns DQ -> Conv -> (ReLU/Clip)
-> Q into QLinearConv only where a Q follows the conv, and DQ, DQ -> Add -> Q into QLinearAdd only
where both inputs come from DQ. A layer-input-only model leaves three kinds of tensors float:

1. the projection conv of a residual MBConv feeds the add, not a quantized layer;
2. the residual add's skip input is the float block input (the first conv quantizes its own copy);
3. a conv whose output goes to a float op: the head conv (-> global pool), the depthwise conv of
   an SE block (-> pool and the channel gate); and the classifier, whose logits are the output.

So (:func:`add_int8_points`, called by ``apply_policy`` for 8-bit activations):

- such a conv's activation gets an output quantizer after it (:class:`QuantizedOutput`: act, then
  Q; BN is already folded): the exported graph reads Conv -> act -> Q, fused into QLinearConv;
- the classifier's logits get an output quantizer (:class:`QuantLinearInt8Output`): QGemm;
- a residual MBConv (:class:`Int8ResidualMBConv`, a class swap: same modules and state-dict keys,
  plus the output quantizer's buffers) adds ``project_q + Q_first(x)``, where ``Q_first`` is the
  block's first conv's input quantizer *applied again, without observing*: the add sees exactly the
  codes the first conv sees, so the skip tensor is quantized once. The add's output is quantized by
  its consumers (the next block's first conv and skip: the same parameters), which makes
  DQ, DQ -> Add -> Q: QLinearAdd.

The head's global pool is exported as GlobalAveragePool followed by the Q of the layer after it
(:class:`Int8PoolHead`, before the flatten): ORT fuses DQ -> GlobalAveragePool -> Q into
QLinearGlobalAveragePool and runs the flatten on int8 (a ReduceMean, or a Q after the flatten,
stays float behind a DequantizeLinear of the whole last feature map).

GhostNet's blocks get their points from ``compress.quantize_ghost`` (one grid per ghost module:
QLinearConcat, int8 residual adds), SE blocks from ``compress.quantize_se`` (QLinearConv for the
gate conv, QLinearSigmoid, QLinearMul; ``int8_se=False`` keeps the gate and multiply float).

The fake-quant model computes what the int8 graph computes by construction (each new point is a
real quantization in both); QAT trains with them. Left float, deliberately: hard-sigmoid gates
(no int8 kernel in ORT; C x 1 x 1 values) and ShuffleNet's units (they split and shuffle) -- their
convs are still int8 where a quantized layer consumes them.

**Mixed fp32/int8 policies** (HAQ's latency mode keeps some layers float): a layer the policy
leaves unnamed stays an ``nn.Conv2d``. Where an 8-bit conv's output feeds such a float conv on the
main path (stem -> MBConv/DSConv convs -> head conv), nothing would quantize that output, so ORT
could not fuse the 8-bit conv either (its weight would be dequantized and the layer run float).
:func:`add_int8_points` gives it an output quantizer at that boundary: Conv -> act -> Q (one
QLinearConv), then DQ into the float run -- Q/DQ only where precision changes. The same for the
projection of a residual block whose first conv is float (its add is float); when instead the
projection is float and the first conv int8, the skip reads the first conv's codes (as
:class:`Int8ResidualMBConv`), so the block input's producer still ends in a Q. Not handled: the add
of an all-int8 residual block whose consumer is float stays a float Add on two DQs, and blocks
off the main path (ghost, shuffle, ...) get no boundary points. Only *float* consumers get one, so
policies of 2..8-bit layers (BitFusion searches) compute exactly as before.
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import Tensor, nn

from compress.quantize_ghost import add_ghost_points, ghost_point_quantizers
from compress.quantize_ops import QUANT_TYPES, ActivationQuantizer, QuantLinear
from compress.quantize_se import INT8_SE, add_se_points, se_point_quantizers
from search_spaces.blocks import DSConv, MBConv, SqueezeExcite
from search_spaces.build import Head

__all__ = ["Int8PoolHead", "Int8ResidualMBConv", "QuantLinearInt8Output", "QuantizedOutput", "add_int8_points", "int8_point_quantizers"]

logger = logging.getLogger(__name__)


class QuantizedOutput(nn.Module):
    """A conv block's activation followed by an 8-bit output quantizer (replaces the activation
    slot of a ConvBNAct, so the export reads Conv -> act -> QuantizeLinear)."""

    def __init__(self, act: nn.Module, name: str = "") -> None:
        super().__init__()
        self.act = act
        self.quant = ActivationQuantizer(8, name=name)

    def forward(self, x: Tensor) -> Tensor:
        return self.quant(self.act(x))


class QuantLinearInt8Output(QuantLinear):
    """The classifier with its logits on an 8-bit grid: ORT forms QGemm only for DQ -> Gemm -> Q
    (without the Q, the float Gemm dequantizes its int8 weight on every run: ~1 ms at 1280x1000).
    A class swap of a QuantLinear; ``output_quant`` is calibrated like every quantizer."""

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quant(super().forward(x))


def _first_layer(block: MBConv) -> nn.Module:
    return block.expand[0] if isinstance(block.expand, nn.Sequential) else block.depthwise[0]


class Int8ResidualMBConv(MBConv):
    """MBConv whose skip input is quantized with its first conv's input parameters (module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        first = _first_layer(self)
        if not (first.quant_enabled and first.input_quant.enabled):
            return out + x
        return out + first.input_quant.quantize_only(x)


def _pool_reader(head: Head) -> nn.Module:
    return head.hidden[0] if isinstance(head.hidden, nn.Sequential) else head.classifier


class Int8PoolHead(Head):
    """A head whose pooled features are put on the next layer's grid before the flatten (module
    docstring). Calibration and QAT skip that early copy: the layer observes the float features."""

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(self.conv(self.preact(x)), 1)
        grid = _pool_reader(self).input_quant
        if not (grid.training or grid.observing):
            pooled = grid.quantize_only(pooled)
        return self.classifier(self.dropout(self.hidden(pooled.flatten(1))))


def _is_int8(layer: nn.Module) -> bool:
    # a DoReFa input is clipped to [0, 1]: reusing it for a residual skip would clip the skip too
    return isinstance(layer, QUANT_TYPES) and layer.activation_bits == 8 and layer.input_quant.scheme == "linear"


def _quantize_output(sequential: nn.Sequential, name: str) -> bool:
    last = len(sequential) - 1
    if isinstance(sequential[last], QuantizedOutput):
        return False
    sequential[last] = QuantizedOutput(sequential[last], name)
    return True


def _is_w8a8(layer: nn.Module) -> bool:
    return _is_int8(layer) and layer.weight_bits == 8


def _is_float(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Conv2d, nn.Linear)) and not isinstance(layer, QUANT_TYPES)


def _main_path(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """(path, ConvBNAct-like sequential) of the chain stem -> MBConv/DSConv convs -> head conv, in
    execution order; a block of another kind ends the known chain (its consumers are not traced)."""
    chain: list[tuple[str, nn.Sequential]] = []
    stem = getattr(model, "stem", None)
    if isinstance(stem, nn.Sequential) and isinstance(stem[0], nn.Sequential):
        chain.append(("stem.0", stem[0]))
    for index, block in enumerate(getattr(model, "blocks", [])):
        if isinstance(block, MBConv):
            parts = [("expand", block.expand), ("depthwise", block.depthwise), ("project", block.project)]
            chain += [(f"blocks.{index}.{key}", part) for key, part in parts if isinstance(part, nn.Sequential)]
        elif isinstance(block, DSConv):
            chain += [(f"blocks.{index}.{i}", part) for i, part in enumerate(block)]
        else:
            return chain
    head_conv = getattr(getattr(model, "head", None), "conv", None)
    if isinstance(head_conv, nn.Sequential):
        chain.append(("head.conv", head_conv))
    return chain


def _add_boundary_points(model: nn.Module) -> int:
    """Output quantizers where a w8a8 conv of the main path feeds a float conv (module docstring)."""
    added = 0
    chain = _main_path(model)
    for (path, producer), (_, consumer) in zip(chain, chain[1:]):
        if _is_w8a8(producer[0]) and _is_float(consumer[0]):
            added += _quantize_output(producer, path)
    for path, block in list(model.named_modules()):
        if not (isinstance(block, MBConv) and block.residual):
            continue
        if _is_w8a8(block.project[0]) and _is_float(_first_layer(block)):
            added += _quantize_output(block.project, f"{path}.project")
        elif _is_w8a8(_first_layer(block)) and _is_float(block.project[0]):
            block.__class__ = Int8ResidualMBConv  # the skip reads the codes the first conv reads
    return added


def add_int8_points(model: nn.Module, int8_se: bool = INT8_SE) -> int:
    """Add the quantization points of the module docstring in place, where the convs they serve are
    quantized with 8-bit activations; returns how many output quantizers were added."""
    added = add_ghost_points(model, _quantize_output) + (add_se_points(model) if int8_se else 0)
    for path, module in list(model.named_modules()):
        if type(module) is MBConv or isinstance(module, Int8ResidualMBConv):
            if isinstance(module.se, SqueezeExcite) and _is_int8(module.depthwise[0]):
                added += _quantize_output(module.depthwise, f"{path}.depthwise")
            if module.residual and _is_int8(_first_layer(module)) and _is_int8(module.project[0]):
                added += _quantize_output(module.project, f"{path}.project")
                module.__class__ = Int8ResidualMBConv
    head_conv = getattr(getattr(model, "head", None), "conv", None)
    if isinstance(head_conv, nn.Sequential) and _is_int8(head_conv[0]):
        added += _quantize_output(head_conv, "head.conv")
    head = getattr(model, "head", None)
    if type(head) is Head and not head.conv_classifier and _is_int8(_pool_reader(head)):
        head.__class__ = Int8PoolHead
    classifier = getattr(getattr(model, "head", None), "classifier", None)
    if type(classifier) is QuantLinear and _is_int8(classifier):
        classifier.output_quant = ActivationQuantizer(8, name="head.classifier output")
        classifier.__class__ = QuantLinearInt8Output
        added += 1
    added += _add_boundary_points(model)
    logger.debug("added %d int8 output quantizers", added)
    return added


def int8_point_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    """The output quantizers :func:`add_int8_points` added (not the layers' input quantizers)."""
    return [quantizer for m in model.modules() for quantizer in
            ([m.quant] if isinstance(m, QuantizedOutput) else [m.output_quant] if isinstance(m, QuantLinearInt8Output) else [])
            ] + ghost_point_quantizers(model) + se_point_quantizers(model)
