"""ONNX QDQ export of an 8-bit quantized model, its faithfulness check, and int8-vs-fp32 latency.

**Path.** PyTorch's TorchScript ONNX exporter writes ``fake_quantize_per_channel_affine`` /
``fake_quantize_per_tensor_affine`` (what ``compress.quantize`` runs in forward) as
QuantizeLinear + DequantizeLinear pairs (opset >= 13; only the ranges (-128, 127) and (0, 255)),
so the exported graph *is* the fake-quantized model: weights QDQ per output channel (axis 0,
int8, zero point 0), each conv/linear input QDQ per tensor (uint8, calibrated zero point). We
export with ``predictors.latency.measure.export_onnx`` (opset 18, constant folding) inside
``frozen_qparams`` so scales and zero points are constants, then rewrite it exactly
(``compress.quantize_onnx.int8_graph``: int8 weight initializers, one Q per tensor, no equal DQ->Q
pairs). With the quantization points of ``compress.quantize_graph`` ONNX Runtime fuses every conv
of MobileNetV2 into QLinearConv (52 of 52; 36 before issue #16), its 10 residual adds into
QLinearAdd and the classifier into QGemm -- ``quantize_static``'s optimized graph, plus the head's
pool as QLinearGlobalAveragePool (``quantize_graph.Int8PoolHead``; the anchor leaves it float);
GhostNet 1.0's 94 convs (15 before ``compress.quantize_ghost``), its 32 ghost concats into
QLinearConcat and 16 adds into QLinearAdd; MnasNet-A1's SE blocks into QLinearGlobalAveragePool,
QLinearSigmoid and QLinearMul (``compress.quantize_se``).
Building QDQ with ``onnxruntime.quantization`` from our ranges was the alternative; it would
re-derive scales with its own rounding rules, so the exporter path is the one whose numerics match
by construction. 8-bit weights are 7-bit codes (``compress.quantize_ops``): full-range int8
weights are not exact on x86 CPUs without VNNI.

**Tolerance.** Both sides compute on the same grids -- including the bias, which
``quantize_ops`` rounds to int32 at ``s_in * s_w`` exactly as ORT's ``BiasQuantization`` transform
does (before that, float biases alone moved outputs by 1-6 classifier steps). What remains: a float
accumulation whose summation order differs between PyTorch's and ORT's conv kernels can land a
pre-quantization value on the other side of a rounding midpoint, moving that code by one step;
flips then propagate, and more so through a deep trained network than a random one. So the
difference is judged against what quantization itself does to the outputs: ``relative`` =
max |ORT - fake-quant| / max |fake-quant - float| on the same inputs. Measured before issue #16
(layer inputs quantized only, full-range int8 weights, a VNNI CPU; 1 thread, all ORT
optimizations; random-init models: BN statistics from 2 batches, classifier weights N(0, 0.05),
8 random inputs; trained: 32 CIFAR-10 test images) -- the int8 graph's own checks are in
BENCHMARKS.md (``bench.int8``) and ``tests/test_int8_graph.py``:

    model @ resolution                      max |diff|   quantization error (max)   relative   top-1 agree
    MobileNetV2 @ 32 (random)               1.8e-7       6.8e-3                     0.00003    100%
    MobileNetV2 @ 224 (random)              1.1e-3       6.3e-3                     0.17       100%
    MnasNet-A1 @ 224 (random)               1.2e-3       7.2e-3                     0.17       100%
    EfficientNet-B0 @ 224 (random)          3.6e-4       1.5e-3                     0.24       100%
    GhostNet 1.0 @ 224 (random)             1.0e-3       2.9e-3                     0.34       100%
    MobileNetV2 w0.5 @ 32, CIFAR, 2 epochs  6.8e-2       2.0e-1                     0.35       100%

The trained network's difference is 57 steps of its classifier input (one flipped code times the
largest classifier weight), a unit we used before and that falsely failed it, while relative to
the quantization error it sits with the random ones. The tolerance is
``QDQ_TOLERANCE = 0.5``: the export may add at most half the error quantization makes.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.quantize import ActivationQuantizer, frozen_qparams, quant_layers, quantization_disabled
from compress.quantize_onnx import int8_graph
from compress.quantize_policy import PolicyError
from predictors.latency.backends import OnnxRuntimeBackend, export_onnx, fixed_input, measure_onnx

__all__ = ["QDQ_TOLERANCE", "ExportCheck", "check_qdq_export", "export_qdq", "measure_int8_latency"]

logger = logging.getLogger(__name__)

QDQ_TOLERANCE = 0.5


def require_int8(qmodel: nn.Module) -> None:
    """Raise unless every quantized layer is 8-bit weights and activations and calibrated."""
    layers = quant_layers(qmodel)
    if not layers:
        raise ValueError("export: the model has no quantized layers; apply_policy() and calibrate() first")
    learned = [f"{n} (weight_bits={m.weight_bits!r}, activation_quantizer={m.input_quant.scheme!r})"
               for n, m in layers.items() if m.weight_bits == "ttq" or m.input_quant.scheme != "linear"]
    if learned:
        # TTQ's two scales per layer are not one int8 grid, and DoReFa's clip is not a QDQ pair
        # ORT fuses; both are trained/costed as simulations, like the 2..7-bit grids
        raise PolicyError(
            "int8 ONNX export: weight_bits='ttq' and activation_quantizer='dorefa' cannot be exported; "
            "allowed: weight_bits=8 with activation_quantizer='linear' on every layer; not: "
            + ", ".join(learned[:5]) + (f", ... ({len(learned)} in all)" if len(learned) > 5 else "")
        )
    wrong = [f"{n} (w{m.weight_bits}a{m.activation_bits})" for n, m in layers.items()
             if m.weight_bits != 8 or m.activation_bits != 8]
    if wrong:
        shown = ", ".join(wrong[:5]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 5 else "")
        raise ValueError(
            f"QDQ export needs weight_bits=8 and activation_bits=8 on every quantized layer (ONNX QuantizeLinear "
            f"is int8/uint8); these are not: {shown}. Lower bit-widths are costed by the accelerator model instead"
        )
    uncalibrated = [n for n, m in qmodel.named_modules() if isinstance(m, ActivationQuantizer) and not bool(m.initialized)]
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
    max_abs_diff: float  # max |ORT - fake-quant|
    mean_abs_diff: float
    quantization_error: float  # max |fake-quant - float|: what quantization itself changed
    tolerance: float  # allowed max_abs_diff / quantization_error
    top1_agreement: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.quantization_error if self.quantization_error > 0 else math.inf

    @property
    def passed(self) -> bool:
        return self.relative <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative": self.relative, "passed": self.passed}


def _session(onnx_model: bytes, threads: int) -> Any:
    # the latency backend's session: same options as every ORT measurement in the project
    return OnnxRuntimeBackend(threads=threads).session(onnx_model)


def check_qdq_export(qmodel: nn.Module, onnx_model: bytes, inputs: Tensor, *,
                     tolerance: float = QDQ_TOLERANCE, threads: int = 1) -> ExportCheck:
    """Run ``onnx_model`` (batch 1) in ONNX Runtime on each row of ``inputs`` and compare with the
    fake-quantized ``qmodel`` (eval mode, on a private copy). See the module docstring."""
    private = copy.deepcopy(qmodel).cpu().eval()
    inputs = inputs.detach().cpu().float()
    with torch.no_grad():
        want = private(inputs).numpy()
        with quantization_disabled(private):
            unquantized = private(inputs).numpy()
    session = _session(onnx_model, threads)
    feed_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    got = np.concatenate([session.run([output_name], {feed_name: row[None].numpy()})[0] for row in inputs])
    diff = np.abs(got - want)
    top1 = float(np.mean(got.argmax(-1) == want.argmax(-1))) if want.ndim == 2 else float("nan")
    check = ExportCheck(len(inputs), float(diff.max()), float(diff.mean()), float(np.abs(want - unquantized).max()),
                        tolerance, top1)
    logger.info("QDQ export check: max |diff| %.3g = %.2f x the quantization error (tolerance %.2f), top-1 "
                "agreement %.3f", check.max_abs_diff, check.relative, tolerance, check.top1_agreement)
    return check


def export_qdq(qmodel: nn.Module, example: Tensor | Sequence[int], *, check_inputs: Tensor | None = None,
               tolerance: float = QDQ_TOLERANCE, threads: int = 1) -> bytes:
    """Serialised ONNX QDQ model (batch 1, opset ``measure.ONNX_OPSET``) of a calibrated all-8-bit
    quantized model; ``example`` is an input tensor or shape. With ``check_inputs``, the export is
    verified with :func:`check_qdq_export` and a RuntimeError raised when it is out of tolerance."""
    require_int8(qmodel)
    private = copy.deepcopy(qmodel).cpu().eval()
    x = _example(private, example)
    with frozen_qparams(private):
        onnx_model, _ = int8_graph(export_onnx(private, x))
    if check_inputs is not None:
        check = check_qdq_export(private, onnx_model, check_inputs, tolerance=tolerance, threads=threads)
        if not check.passed:
            raise RuntimeError(
                f"QDQ export is not faithful: max |ORT - fake-quant| = {check.max_abs_diff:.3g} = "
                f"{check.relative:.2f} x the quantization error {check.quantization_error:.3g}, tolerance {tolerance}"
            )
    return onnx_model


def measure_int8_latency(model: nn.Module, qmodel: nn.Module, input_shape: Sequence[int], *, threads: int = 1,
                         int8_model: bytes | None = None, **measure_kw: Any) -> dict[str, Any]:
    """ONNX Runtime CPU latency of the float ``model`` and its all-8-bit ``qmodel`` as exported
    (:func:`export_qdq`, or ``int8_model`` when already exported), timed together (interleaved) with
    the project's protocol (``predictors.latency.backends.measure_onnx``). Check the export's
    numerics with :func:`export_qdq` (``check_inputs``) first."""
    require_int8(qmodel)
    shape = (1, *tuple(input_shape)[1:])
    backend = OnnxRuntimeBackend(threads=threads)
    fp32_model = export_onnx(copy.deepcopy(model).cpu().eval(), fixed_input(shape))
    int8_model = int8_model if int8_model is not None else export_qdq(qmodel, shape)
    fp32, int8 = measure_onnx(backend, [fp32_model, int8_model], shape, **measure_kw)
    return {
        "input_shape": list(shape), "fp32": fp32.to_dict(), "int8": int8.to_dict(),
        "speedup": fp32.median_ms / int8.median_ms if int8.median_ms > 0 else float("inf"),
        "fp32_bytes": len(fp32_model), "int8_bytes": len(int8_model), "backend": backend.metadata(),
    }
