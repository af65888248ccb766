"""HAQ's latency-constrained mode: per layer {int8, fp32}, the budget in milliseconds of ONNX
Runtime latency predicted from a per-layer table (HAQ, Wang et al., CVPR 2019, Sec. 3.3: the
"direct feedback" is a hardware's latency, here the real runtime's).

Why a second problem and not new bit-widths for the first: the runtime executes exactly two
precisions per conv/linear layer (ORT's QLinearConv/QGemm or its float kernels; 2..7-bit grids
run nowhere but in the BitFusion simulation), so the action space is binary. The DDPG agent,
its state, reward and the budget cut are ``compress.haq`` / ``compress.haq_problem``'s; only
these differ:

- **action**: ``a >= 0.5`` keeps the layer fp32, below runs it int8 (level 1 / 0; the executed
  action stored for the critic is the centre of its half, 0.75 / 0.25);
- **constraint**: predicted latency ``<= latency_budget_ms`` (below); the cut turns fp32
  layers into int8 from the last layer to the first until it holds (``cut_to_budget`` with
  levels), the order HAQ takes bits away in;
- **no pinned layers**: ``HaqConfig.keep_first_last`` is not applied, so all-int8 -- the floor of
  the budget and the baseline the search must beat -- stays reachable; the agent learns which
  layers are worth their milliseconds.

Two cost models: ``layer_cost(index, precision) -> ms``, any callable over the conv/linear layers
in execution order (``quantize_cost.layer_infos``; one decision per layer, the sum predicts) --
:class:`LayerLatencyTable` is the one filled by in-context measurement
(``compress.haq_measure.measure_layer_table``); or the int8-aware ``predictors.latency.LatencyTable``
(``nas lut build --precision int8``), whose granularity is the table's layer -- stem, each block,
head: one decision per block (all its convs int8 or all fp32) and ``predict_mixed``, with a Q or
DQ wherever the precision changes, predicts. Either way the costs the search sees are
*predicted*; the chosen policy is then *measured* end to end (``compress.haq_measure``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from compress.haq_problem import HaqConfig, QuantProblem, cut_to_budget
from compress.quantize_cost import LayerInfo
from compress.quantize_policy import QuantPolicy
from search_spaces.errors import InputFileError, OptionError

__all__ = ["INT8", "FP32", "PRECISIONS", "LayerCost", "LayerLatencyTable", "LatencyProblem", "predicted_ms"]

INT8, FP32 = "int8", "fp32"
PRECISIONS = (INT8, FP32)
LayerCost = Callable[[int, str], float]
TABLE_SCHEMA = "hwnas-haq-layer-latency"


@dataclass(frozen=True)
class LayerLatencyTable:
    """Per-layer ms at each precision, layers in execution order. ``source`` says where the numbers
    come from (kept in reports: a table measured on one CPU predicts that CPU only)."""

    layers: tuple[str, ...]
    int8_ms: tuple[float, ...]
    fp32_ms: tuple[float, ...]
    source: str = "unspecified"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for field in ("int8_ms", "fp32_ms"):
            values = tuple(float(v) for v in getattr(self, field))
            if len(values) != len(self.layers) or not all(math.isfinite(v) for v in values):
                raise OptionError(f"LayerLatencyTable.{field}: expected {len(self.layers)} finite numbers "
                                  f"(one per layer), got {len(values)}")
            object.__setattr__(self, field, values)

    def layer_ms(self, index: int, precision: str) -> float:
        if precision not in PRECISIONS:
            raise OptionError(f"layer_ms: precision={precision!r} not in {PRECISIONS}")
        return (self.int8_ms if precision == INT8 else self.fp32_ms)[index]

    def __call__(self, index: int, precision: str) -> float:
        return self.layer_ms(index, precision)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": TABLE_SCHEMA, **asdict(self)}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LayerLatencyTable:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise InputFileError(f"{path}: cannot read a layer latency table ({error})") from error
        if not isinstance(data, dict) or data.get("schema") != TABLE_SCHEMA:
            raise InputFileError(f"{path}: schema must be {TABLE_SCHEMA!r} (a table written by "
                                 f"LayerLatencyTable.save / bench.haq_latency)")
        try:
            return cls(tuple(data["layers"]), tuple(data["int8_ms"]), tuple(data["fp32_ms"]),
                       str(data.get("source", "unspecified")))
        except (KeyError, TypeError) as error:
            raise InputFileError(f"{path}: missing or malformed field {error}; need layers, int8_ms, "
                                 "fp32_ms") from error

    def check_layers(self, names: Sequence[str]) -> None:
        if tuple(names) != self.layers:
            raise OptionError(f"layer latency table: its layers {list(self.layers)[:3]}... ({len(self.layers)}) are "
                              f"not the model's {list(names)[:3]}... ({len(names)}); build the table for this model")


def predicted_ms(layer_cost: LayerCost, names: Sequence[str], policy: QuantPolicy) -> float:
    """Predicted latency of ``policy``: layers it names (8-bit) at int8, the others at fp32."""
    return float(sum(layer_cost(i, INT8 if name in policy.layers else FP32) for i, name in enumerate(names)))


def _lut_units(names: Sequence[str], spec: Any) -> list[tuple[str, list[str]]]:
    """The int8-aware table's layers (stem, blocks.i, head) and the conv/linear layers in each."""
    from predictors.latency.lut import arch_layers

    units = [(unit, [n for n in names if n == unit or n.startswith(unit + ".")]) for unit, _, _ in arch_layers(spec)]
    placed = {n for _, members in units for n in members}
    if placed != set(names):
        raise OptionError(f"latency table: layers {sorted(set(names) - placed)[:3]} belong to none of the table's "
                          f"layers {[u for u, _ in units]}")
    return [(unit, members) for unit, members in units if members]


def _unit_info(name: str, members: Sequence[LayerInfo]) -> LayerInfo:
    """A decision unit (a block) as one state row: its first input, its last output, summed sizes."""
    first, last = members[0], members[-1]
    return replace(first, name=name, out_channels=last.out_channels, kernel=max(m.kernel for m in members),
                   stride=math.prod(m.stride for m in members), groups=1, out_size=last.out_size,
                   weight_params=sum(m.weight_params for m in members), macs=sum(m.macs for m in members))


class LatencyProblem(QuantProblem):
    """``compress.haq_problem``'s problem with levels {0: int8, 1: fp32} and a predicted-latency
    budget. ``cost`` is a per-layer ``layer_cost`` (one decision per conv/linear layer, the sum
    predicts), or an int8-aware ``predictors.latency.LatencyTable`` (one decision per table layer
    -- stem, each block, head -- and its ``predict_mixed``, transitions included, predicts; the
    model must carry its ``spec``, as ``search_spaces.build`` models do)."""

    def __init__(self, base: nn.Module, batches: list, config: HaqConfig, budget_ms: float,
                 cost: LayerCost | Any) -> None:
        super().__init__(base, batches, config, search_activations=False, budget=budget_ms, by_cost=False)
        if hasattr(cost, "predict_mixed"):
            spec = getattr(base, "spec", None)
            if spec is None:
                raise OptionError("latency table mode needs a model built from a spec (model.spec)")
            by_name = {info.name: info for info in self.infos}
            self.units = _lut_units(self.names, spec)
            self.infos = [_unit_info(unit, [by_name[n] for n in members]) for unit, members in self.units]
            self.predict = lambda precisions: float(cost.predict_mixed(spec, precisions))
            self.cost_source = f"predicted by the int8-aware latency table {getattr(cost, 'label', '')}".strip()
        else:
            if isinstance(cost, LayerLatencyTable):
                cost.check_layers(self.names)
            self.units = [(name, [name]) for name in self.names]
            self.predict = lambda precisions: float(sum(cost(i, p) for i, p in enumerate(precisions)))
            self.cost_source = f"predicted by layer_cost ({getattr(cost, 'source', 'a callable')})"
        self.steps = len(self.units)
        self.pinned = set()
        self.cuttable = list(range(self.steps))
        self.budget_kind = "latency_ms"

    def to_bits(self, action: float) -> int:
        return 1 if action >= 0.5 else 0

    def to_action(self, level: int) -> float:
        return 0.25 + 0.5 * level

    def policy_of(self, bits: list[int]) -> QuantPolicy:
        return QuantPolicy({n: (8, 8) for (_, members), level in zip(self.units, bits) if level == 0 for n in members})

    def unit_precisions(self, policy: QuantPolicy) -> list[str]:
        """Per unit: int8 when the policy names all its layers at 8 bits, else fp32."""
        return [INT8 if all(policy.layers.get(n) == (8, 8) for n in members) else FP32 for _, members in self.units]

    def resource(self, policy: QuantPolicy) -> float:
        return self.predict(self.unit_precisions(policy))

    def allowed(self, bits: list[int]) -> list[int]:
        return list(bits)

    def check_reachable(self) -> None:
        floor = self.resource(self.policy_of([0] * self.steps))
        if floor > self.budget:
            raise OptionError(f"search_quant_policy: latency_budget_ms={self.budget:g} is below the minimum "
                              f"{floor:.4g} ms (every layer int8, {self.cost_source})")

    def fit(self, bits: list[int]) -> list[int]:
        return cut_to_budget(list(bits), lambda b: self.resource(self.policy_of(b)), self.budget,
                             self.cuttable, 0)
