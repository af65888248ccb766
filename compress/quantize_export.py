"""ONNX QDQ export of an 8-bit quantized model, its faithfulness check, and int8-vs-fp32 latency.

**Path.** PyTorch's TorchScript ONNX exporter writes ``fake_quantize_per_channel_affine`` /
``fake_quantize_per_tensor_affine`` (what ``compress.quantize`` runs in forward) as
QuantizeLinear + DequantizeLinear pairs (opset >= 13; only the ranges (-128, 127) and (0, 255)),
so the exported graph *is* the fake-quantized model: weights QDQ per output channel (axis 0,
int8, zero point 0), each conv/linear input QDQ per tensor (uint8, calibrated zero point). We
export with ``predictors.latency.measure.export_onnx`` (opset 18, constant folding) inside
``frozen_qparams`` so scales and zero points are constants; ONNX Runtime then fuses
DQ -> Conv -> (ReLU/Clip) -> Q into QLinearConv (MobileNetV2: 36 of its 52 convs). Building QDQ
with ``onnxruntime.quantization`` from our ranges was the alternative; it would re-derive scales
with its own rounding rules, so the exporter path is the one whose numerics match by construction.

**Tolerance.** Both sides compute on the same grids -- including the bias, which
``quantize_ops`` rounds to int32 at ``s_in * s_w`` exactly as ORT's ``BiasQuantization`` transform
does (before that, float biases alone caused 1-6 step differences). What remains: a float
accumulation whose summation order differs between PyTorch's and ORT's conv kernels can land a
pre-quantization value on the other side of a rounding midpoint, moving that code by one step;
flips then propagate. We measure the output difference in *output steps*,
``step = s_in * max|W_q|`` of the last quantized layer (the largest change one flipped input code
of the classifier can make). Measured (random-init weights with BN statistics from 2 batches,
classifier weights N(0, 0.05), 8 random inputs, 1 thread, all ORT optimizations):

    model @ resolution          max |diff|   output steps   quantization error (max)   top-1 agree
    MobileNetV2 @ 32            1.8e-7       0.0005         6.8e-3                     100%
    MobileNetV2 @ 224           1.1e-3       2.9            6.3e-3                     100%
    MnasNet-A1 @ 224            1.2e-3       3.4            7.2e-3                     100%
    EfficientNet-B0 @ 224       3.6e-4       3.4            1.5e-3                     100%
    GhostNet 1.0 @ 224          1.0e-3       9.8            2.9e-3                     100%

so the export adds 0.15-0.35x the error that quantization itself makes. The default tolerance
is ``QDQ_TOLERANCE_STEPS = 16`` output steps of max abs difference; the tests' small model must
(and does) agree to float precision.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.quantize import frozen_qparams, quant_layers
from compress.quantize_cost import layer_infos
from predictors.latency.backends import OnnxRuntimeBackend, export_onnx
from predictors.latency.measure import measure_modules

__all__ = ["QDQ_TOLERANCE_STEPS", "ExportCheck", "check_qdq_export", "export_qdq", "measure_int8_latency"]

logger = logging.getLogger(__name__)

QDQ_TOLERANCE_STEPS = 16.0


def require_int8(qmodel: nn.Module) -> None:
    """Raise unless every quantized layer is 8-bit weights and activations and calibrated."""
    layers = quant_layers(qmodel)
    if not layers:
        raise ValueError("export: the model has no quantized layers; apply_policy() and calibrate() first")
    wrong = [f"{n} (w{m.weight_bits}a{m.activation_bits})" for n, m in layers.items()
             if m.weight_bits != 8 or m.activation_bits != 8]
    if wrong:
        shown = ", ".join(wrong[:5]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 5 else "")
        raise ValueError(
            f"QDQ export needs weight_bits=8 and activation_bits=8 on every quantized layer (ONNX QuantizeLinear "
            f"is int8/uint8); these are not: {shown}. Lower bit-widths are costed by the accelerator model instead"
        )
    uncalibrated = [n for n, m in layers.items() if not bool(m.input_quant.initialized)]
    if uncalibrated:
        raise ValueError(f"export: layers {uncalibrated[:5]} have no activation range; run calibrate() first")


def _example(qmodel: nn.Module, example: Tensor | Sequence[int]) -> Tensor:
    if isinstance(example, Tensor):
        return example[:1].detach().cpu()
    shape = (1, *tuple(example)[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True, slots=True)
class ExportCheck:
    """ORT output vs the fake-quantized PyTorch output on the same inputs."""

    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    output_step: float  # s_in * max|W_q| of the last quantized layer
    max_steps: float  # max_abs_diff / output_step
    tolerance_steps: float
    top1_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_steps <= self.tolerance_steps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _output_step(qmodel: nn.Module, input_shape: Sequence[int]) -> float:
    layers = quant_layers(qmodel)
    order = [info.name for info in layer_infos(qmodel, input_shape) if info.name in layers]
    last = layers[order[-1]]
    scale, _ = last.input_quant.qparams()
    with torch.no_grad():
        return float(scale) * float(last.quantized_weight().abs().max())


def _session(onnx_model: bytes, threads: int) -> Any:
    # the latency backend's session: same options as every ORT measurement in the project
    return OnnxRuntimeBackend(threads=threads).session(onnx_model)


def check_qdq_export(qmodel: nn.Module, onnx_model: bytes, inputs: Tensor, *,
                     tolerance_steps: float = QDQ_TOLERANCE_STEPS, threads: int = 1) -> ExportCheck:
    """Run ``onnx_model`` (batch 1) in ONNX Runtime on each row of ``inputs`` and compare with the
    fake-quantized ``qmodel`` (eval mode, on a private copy). See the module docstring."""
    private = copy.deepcopy(qmodel).cpu().eval()
    inputs = inputs.detach().cpu().float()
    with torch.no_grad():
        want = private(inputs).numpy()
    session = _session(onnx_model, threads)
    feed_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    got = np.concatenate([session.run([output_name], {feed_name: row[None].numpy()})[0] for row in inputs])
    diff = np.abs(got - want)
    step = _output_step(private, inputs.shape)
    top1 = float(np.mean(got.argmax(-1) == want.argmax(-1))) if want.ndim == 2 else float("nan")
    check = ExportCheck(len(inputs), float(diff.max()), float(diff.mean()), step,
                        float(diff.max()) / step if step > 0 else float("inf"), tolerance_steps, top1)
    logger.info("QDQ export check: max |diff| %.3g = %.2f output steps (tolerance %.1f), top-1 agreement %.3f",
                check.max_abs_diff, check.max_steps, tolerance_steps, check.top1_agreement)
    return check


def export_qdq(qmodel: nn.Module, example: Tensor | Sequence[int], *, check_inputs: Tensor | None = None,
               tolerance_steps: float = QDQ_TOLERANCE_STEPS, threads: int = 1) -> bytes:
    """Serialised ONNX QDQ model (batch 1, opset ``measure.ONNX_OPSET``) of a calibrated all-8-bit
    quantized model; ``example`` is an input tensor or shape. With ``check_inputs``, the export is
    verified with :func:`check_qdq_export` and a RuntimeError raised when it is out of tolerance."""
    require_int8(qmodel)
    private = copy.deepcopy(qmodel).cpu().eval()
    x = _example(private, example)
    with frozen_qparams(private):
        onnx_model = export_onnx(private, x)
    if check_inputs is not None:
        check = check_qdq_export(private, onnx_model, check_inputs, tolerance_steps=tolerance_steps, threads=threads)
        if not check.passed:
            raise RuntimeError(
                f"QDQ export is not faithful: max |ORT - fake-quant| = {check.max_abs_diff:.3g} = "
                f"{check.max_steps:.1f} output steps (step {check.output_step:.3g}), tolerance {tolerance_steps}"
            )
    return onnx_model


def measure_int8_latency(model: nn.Module, qmodel: nn.Module, input_shape: Sequence[int], *, threads: int = 1,
                         **measure_kw: Any) -> dict[str, Any]:
    """ONNX Runtime CPU latency of the float ``model`` and its all-8-bit QDQ ``qmodel``, measured
    together (interleaved) with the project's protocol (``measure_modules``). Check the export's
    numerics with :func:`export_qdq` (``check_inputs``) first: the backend's float check is off
    here because an int8 model is not meant to match its float self to 1e-4."""
    require_int8(qmodel)
    shape = (1, *tuple(input_shape)[1:])
    backend = OnnxRuntimeBackend(threads=threads, check_export=False)
    private = copy.deepcopy(qmodel).cpu().eval()
    with frozen_qparams(private):  # the backend's deep copy keeps the frozen scales
        fp32, int8 = measure_modules(backend, [(model, shape), (private, shape)], **measure_kw)
    return {
        "input_shape": list(shape), "fp32": fp32.to_dict(), "int8": int8.to_dict(),
        "speedup": fp32.median_ms / int8.median_ms if int8.median_ms > 0 else float("inf"),
        "backend": backend.metadata(),
    }
