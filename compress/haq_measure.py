"""Measured side of HAQ's latency mode (``compress.haq_latency``): a per-layer table measured on
ONNX Runtime, end-to-end latency of chosen policies, and the two baselines a latency-mode
policy has to beat.

**The table** (:func:`measure_layer_table`): each layer's cost *in context*, not in isolation.
The all-int8 model and, for each layer i, the all-int8 model with layer i kept fp32 are exported
(``quantize_export.export_qdq``: the mixed graphs with Q/DQ only at precision boundaries) and
timed interleaved (1 thread, batch 1, ``backends.measure_onnx``). ``fp32_ms[i] - int8_ms[i]`` is
the measured difference ``T(i fp32) - T(all int8)`` -- it includes the boundary Q/DQ that keeping
layer i float adds, which an isolated per-op table misses -- and ``int8_ms[i]`` is an equal share
of ``T(all int8)``, so the prediction for all-int8 is the measurement itself. Predictions for
several fp32 layers assume the differences add up; where neighbouring float layers share a
boundary they do not quite, which is why chosen policies are measured end to end and predicted
vs measured is reported. A difference can be negative (a small layer whose Q/DQ costs more
than its int8 kernel saves): the agent then gains latency by keeping it float.

The same run also times the fp32 model: the table's all-fp32 prediction against that measurement
(in ``source``; a warning beyond 25%) says whether the differences add up on this machine.

**Baselines** (:func:`latency_baselines`), evaluated exactly as the search evaluates: uniform int8,
and "best single layer kept fp32": each decision unit (a conv/linear layer; a block with an
int8-aware ``LatencyTable``) kept fp32 in turn, the most accurate one whose predicted latency
fits the budget.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from compress.haq_latency import LatencyProblem, LayerCost, LayerLatencyTable
from compress.haq_problem import HaqConfig
from compress.quantize import apply_policy, calibrate, fold_conv_batchnorm
from compress.quantize_cost import layer_infos
from compress.quantize_export import check_qdq_export, export_qdq
from compress.quantize_onnx import optimized_op_counts, summarize_ops
from compress.quantize_policy import QuantPolicy
from predictors.latency.backends import OnnxRuntimeBackend, export_onnx, fixed_input, measure_onnx

__all__ = ["export_policy", "latency_baselines", "latency_problem", "layer_names", "measure_layer_table",
           "measure_policies", "single_fp32_policy"]

logger = logging.getLogger(__name__)

ADDITIVITY_WARNING = 0.25  # |predicted - measured| all-fp32 latency, as a fraction of measured, that is warned about


def layer_names(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """The quantizable layers in execution order: the index order of ``layer_cost``."""
    return [info.name for info in layer_infos(model, tuple(input_shape))]


def single_fp32_policy(names: Sequence[str], keep: str | None) -> QuantPolicy:
    """Every layer int8 except ``keep`` (None: uniform int8)."""
    return QuantPolicy({name: (8, 8) for name in names if name != keep})


def export_policy(model: nn.Module, policy: QuantPolicy, calibration: Iterable[Tensor], input_shape: Sequence[int],
                  check_inputs: Tensor | None = None) -> tuple[nn.Module, bytes]:
    """The calibrated quantized copy of ``model`` under an int8/fp32 ``policy`` and its ONNX export
    (checked against fake-quant when ``check_inputs`` is given)."""
    qmodel = calibrate(apply_policy(model, policy), list(calibration)).eval()
    return qmodel, export_qdq(qmodel, input_shape, check_inputs=check_inputs)


def measure_layer_table(model: nn.Module, calibration: Iterable[Tensor], input_shape: Sequence[int], *,
                        threads: int = 1, **measure_kw: Any) -> LayerLatencyTable:
    """The in-context table of the module docstring (len(layers) + 1 exports, timed together)."""
    # activation ranges do not change latency: 8 images set them, so the len(layers) + 1 exports stay cheap
    first = next(iter(calibration))
    batches = [(first[0] if isinstance(first, (tuple, list)) else first)[:8]]
    shape = (1, *tuple(input_shape)[1:])
    names = layer_names(model, shape)
    exports = []
    for keep in [None, *names]:
        exports.append(export_policy(model, single_fp32_policy(names, keep), batches, shape)[1])
        logger.info("layer table: exported %d of %d models", len(exports), len(names) + 1)
    exports.append(export_onnx(copy.deepcopy(model).cpu().eval(), fixed_input(shape)))  # the additivity check
    timed = measure_onnx(OnnxRuntimeBackend(threads=threads), exports, shape, **measure_kw)
    base, all_fp32 = timed[0].median_ms, timed[-1].median_ms
    share = base / len(names)
    # a layer kept fp32 may run faster than int8 (x86 without VNNI), but never in negative time: a
    # difference below -share is timing noise, so it is floored at 0 (the additivity check still says so)
    fp32_ms = tuple(max(0.0, share + m.median_ms - base) for m in timed[1:-1])
    predicted = sum(fp32_ms)
    if abs(predicted - all_fp32) > ADDITIVITY_WARNING * all_fp32:
        logger.warning("layer table: all layers fp32 predicted %.4f ms, measured %.4f ms in the same run: the "
                       "per-layer differences do not add up (a busy machine, or too few timed runs)",
                       predicted, all_fp32)
    source = (f"measured in context on ONNX Runtime ({threads} thread(s), batch 1): T(layer i fp32) - T(all int8), "
              f"all int8 {base:.4f} ms; all fp32 measured {all_fp32:.4f} ms, predicted {predicted:.4f} ms")
    return LayerLatencyTable(tuple(names), tuple(share for _ in names), fp32_ms, source)


def measure_policies(model: nn.Module, policies: Mapping[str, QuantPolicy], calibration: Iterable[Tensor],
                     input_shape: Sequence[int], *, predict: Callable[[QuantPolicy], float] | None = None,
                     check_inputs: Tensor | None = None, threads: int = 1, **measure_kw: Any) -> dict[str, Any]:
    """Each policy exported (and checked with ``check_inputs``) and timed end to end on ONNX
    Runtime, interleaved with the fp32 model: ``{"fp32": {...}, label: {...}, "backend": ...}``,
    each with ``measured_ms`` (median), p10/p90, and for policies ``predicted_ms`` (with
    ``predict``, e.g. :func:`latency_predictor`), the ORT op census and the export check (a failed
    check is recorded, with ``passed: false``, not raised)."""
    batches = list(calibration)
    shape = (1, *tuple(input_shape)[1:])
    names = layer_names(model, shape)
    backend = OnnxRuntimeBackend(threads=threads)
    exports = {"fp32": export_onnx(copy.deepcopy(model).cpu().eval(), fixed_input(shape))}
    checks: dict[str, Any] = {}
    for label, policy in policies.items():
        # checked here rather than inside the export: a policy whose graph strays from fake-quant is
        # still timed, and its failed check is reported beside its latency instead of ending the run
        qmodel, exports[label] = export_policy(model, policy, batches, shape)
        if check_inputs is not None:
            checks[label] = check_qdq_export(qmodel, exports[label], check_inputs).to_dict()
            if not checks[label]["passed"]:
                logger.warning("%s: export not faithful (%.2f x the quantization error, tolerance %g)", label,
                               checks[label]["relative"], checks[label]["tolerance"])
    timed = measure_onnx(backend, list(exports.values()), shape, **measure_kw)
    result: dict[str, Any] = {"backend": backend.metadata(), "latency_source": "measured end to end"}
    for (label, onnx_model), measurement in zip(exports.items(), timed):
        entry: dict[str, Any] = {"measured_ms": measurement.median_ms, "p10_ms": measurement.p10_ms,
                                 "p90_ms": measurement.p90_ms, "bytes": len(onnx_model)}
        if label in policies:
            entry["fp32_layers"] = [n for n in names if n not in policies[label].layers]
            entry["ort_ops"] = summarize_ops(optimized_op_counts(onnx_model, threads))
            if predict is not None:
                entry["predicted_ms"] = predict(policies[label])
            if label in checks:
                entry["export_check"] = checks[label]
        result[label] = entry
    return result


def latency_problem(model: nn.Module, calibration: Iterable[Tensor], layer_cost: LayerCost | Any,
                    latency_budget_ms: float) -> LatencyProblem:
    """The search's problem for ``model`` (BN folded, as the search folds it): its ``resource``
    predicts a policy's latency, its ``units`` are what one decision covers."""
    base = fold_conv_batchnorm(copy.deepcopy(model).eval())
    return LatencyProblem(base, list(calibration), HaqConfig(), latency_budget_ms, layer_cost)


def latency_baselines(model: nn.Module, evaluate: Callable[[nn.Module], float], *, calibration: Iterable[Tensor],
                      layer_cost: LayerCost | Any, latency_budget_ms: float) -> dict[str, Any]:
    """Uniform int8 and the best single-fp32-layer policy under the budget (module docstring):
    ``{"uniform_int8": {...}, "best_single_fp32": {...} | None}``, each with the policy, its
    accuracy (``evaluate`` on the calibrated quantized model, as the search) and predicted ms;
    ``best_single_fp32`` also lists every candidate tried."""
    problem = latency_problem(model, calibration, layer_cost, latency_budget_ms)
    problem.check_reachable()
    units = dict(problem.units)

    def policy_keeping(unit: str | None) -> QuantPolicy:
        return QuantPolicy({n: (8, 8) for n in problem.names if unit is None or n not in units[unit]})

    def entry(unit: str | None) -> dict[str, Any]:
        policy = policy_keeping(unit)
        return {"fp32_layer": unit, "accuracy": problem.accuracy_of(policy, evaluate),
                "predicted_ms": problem.resource(policy), "policy": policy.to_dict()}

    candidates = [entry(unit) for unit in units if problem.resource(policy_keeping(unit)) <= latency_budget_ms]
    best = max(candidates, key=lambda c: (c["accuracy"], -c["predicted_ms"]), default=None)
    if best is not None:
        best = {**best, "candidates": [{k: c[k] for k in ("fp32_layer", "accuracy", "predicted_ms")}
                                       for c in candidates]}
    return {"uniform_int8": entry(None), "best_single_fp32": best, "latency_budget_ms": latency_budget_ms}
