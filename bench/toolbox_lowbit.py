"""The 1-2-bit weight family on the trained base: BWN, TWN, TTQ, and TTQ with DoReFa activations,
each with the same QAT + distillation budget (``ctx.finetune_epochs``), against the fp32 base.

- BWN (XNOR-Net's binary weights, Rastegari et al. 2016), TWN (Li & Liu 2016) and TTQ (Zhu et al.,
  ICLR 2017) on every conv/linear layer except the first (stem) and the last (classifier), which
  stay at 8-bit weights -- the convention of all three papers, which keep them full precision;
  activations 8-bit linear everywhere, so the rows differ only in the weights.
- TTQ + DoReFa a4 (Zhou et al. 2016): the same TTQ weights; the middle layers' inputs at 4 bits.
  DoReFa's clip to [0, 1] only makes sense on a non-negative input, so it goes to the layers whose
  input is >= 0 on the calibration images (in MobileNetV2: after a ReLU6, the depthwise and
  projection convs); the others (expansion and head convs, which read the signed residual stream)
  take 4-bit linear activations. First and last layer: 8/8 as above.

Weight bits count every conv/linear weight at its policy's bits and biases at 32
(``compress.quantize_cost.policy_weight_bits``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from bench.toolbox_context import ToolboxContext
from compress.quantize import prepare_qat, quant_layers
from compress.quantize_cost import policy_weight_bits
from compress.quantize_policy import QuantPolicy, quantizable_layers

logger = logging.getLogger(__name__)

DOREFA_BITS = 4
METHODS = (  # label, weight scheme of the middle layers, their activation bits, DoReFa where the input is >= 0
    ("BWN", "binary", 8, False),
    ("TWN", "ternary", 8, False),
    ("TTQ", "ttq", 8, False),
    (f"TTQ + DoReFa a{DOREFA_BITS}", "ttq", DOREFA_BITS, True),
)


@torch.no_grad()
def non_negative_inputs(model: nn.Module, batches: list[torch.Tensor]) -> set[str]:
    """The conv/linear layers whose input was >= 0 on every calibration image."""
    low: dict[str, float] = {}
    hooks = [layer.register_forward_pre_hook(
        lambda module, inputs, name=name: low.__setitem__(name, min(low.get(name, 0.0), float(inputs[0].min()))))
        for name, layer in quantizable_layers(model).items()]
    try:
        for batch in batches:
            model.eval()(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name for name, value in low.items() if value >= 0.0}


def lowbit_policy(model: nn.Module, weights: str, activation_bits: int, dorefa: set[str]) -> QuantPolicy:
    names = list(quantizable_layers(model))
    middle = names[1:-1]
    layers = {names[0]: (8, 8), **{name: (weights, activation_bits) for name in middle}, names[-1]: (8, 8)}
    return QuantPolicy(layers, activation_quantizer={name: "dorefa" for name in middle if name in dorefa})


def _zero_fraction(qmodel: nn.Module) -> float:
    """Share of zero weights over the ternary (and binary) layers, as the model computes with them."""
    zeros = total = 0
    with torch.no_grad():
        for layer in quant_layers(qmodel).values():
            if isinstance(layer.weight_bits, str):
                weight = layer.quantized_weight()
                zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
    return zeros / total if total else 0.0


def run(ctx: ToolboxContext) -> dict[str, Any]:
    base = ctx.base
    calibration = ctx.data.calibration_batches(ctx.seed)
    dorefa = non_negative_inputs(ctx.fresh_base(), calibration)
    fp32_bits = policy_weight_bits(base, QuantPolicy({}))
    rows: dict[str, dict[str, Any]] = {"fp32": {
        "weights": "fp32", "activations": "fp32", "weight_bits": fp32_bits, "compression": 1.0,
        "test_accuracy_ptq": None, "test_accuracy": ctx.base_accuracy, "zero_weights": None}}
    for label, weights, activation_bits, use_dorefa in METHODS:
        start = time.perf_counter()
        policy = lowbit_policy(base, weights, activation_bits, dorefa if use_dorefa else set())
        qmodel = prepare_qat(base, policy, calibration=calibration)
        ptq = ctx.test_accuracy(qmodel)
        report = ctx.finetune(qmodel)
        bits = policy_weight_bits(base, policy)
        rows[label] = {
            "weights": weights, "activations": f"{activation_bits}-bit"
            + (f" (DoReFa on {len(policy.activation_quantizer)} layers)" if use_dorefa else " linear"),
            "weight_bits": bits, "compression": fp32_bits / bits, "test_accuracy_ptq": ptq,
            "test_accuracy": report.test_accuracy, "zero_weights": _zero_fraction(qmodel.eval()),
            "policy": policy.to_dict(), "wall_s": time.perf_counter() - start,
        }
        logger.info("%s: %d weight bits, test acc %.4f calibrated, %.4f after %d QAT epochs", label, bits, ptq,
                    report.test_accuracy, ctx.finetune_epochs)
    return {"finetune_epochs": ctx.finetune_epochs, "max_batches_per_epoch": ctx.config.max_batches_per_epoch,
            "layers": len(quantizable_layers(base)), "dorefa_candidates": sorted(dorefa), "rows": rows}


def _pct(value: float | None) -> str:
    return "--" if value is None else f"{100 * value:.1f}%"


def render(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    lines = [
        "**1-2-bit weights: BWN, TWN, TTQ, TTQ + DoReFa** (`bench/toolbox_lowbit.py`). On the trained base, "
        f"every conv/linear layer but the first and the last ({result['layers'] - 2} of {result['layers']}) "
        "gets binary (BWN), ternary (TWN: threshold 0.7 mean|w|, one scale per channel) or trained ternary "
        "(TTQ: threshold 0.05 max|w|, learned positive and negative scales per layer) weights; the first and "
        "last layers keep 8-bit weights, and activations are 8-bit linear, except in the last row: 4-bit "
        "DoReFa (clip to [0, 1]) on the layers whose input is non-negative, 4-bit linear on the others. "
        f"Each gets the same {result['finetune_epochs']} epochs of QAT distilled from the fp32 base. Weight "
        "bits: weights at their bits, biases at 32. \"calibrated\" is before QAT.",
        "",
        "| method | weights | activations | weight Mbit | x smaller | test acc calibrated | test acc after QAT | zero weights |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in rows.items():
        zero = "--" if row["zero_weights"] is None else f"{100 * row['zero_weights']:.0f}%"
        lines.append(f"| {label} | {row['weights']} | {row['activations']} | {row['weight_bits'] / 1e6:.2f} | "
                     f"{row['compression']:.1f} | {_pct(row['test_accuracy_ptq'])} | {_pct(row['test_accuracy'])} | {zero} |")
    return lines
