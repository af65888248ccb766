"""HAQ's latency-constrained mode: per layer {int8, fp32}, the budget in milliseconds of ONNX
Runtime latency predicted from a per-layer table (HAQ, Wang et al., CVPR 2019, Sec. 3.3: the
"direct feedback" is a hardware's latency, here the real runtime's).

Why a second problem and not new bit-widths for the first: the runtime executes exactly two
precisions per conv/linear layer (ORT's QLinearConv/QGemm or its float kernels; 2..7-bit grids
run nowhere but in the BitFusion simulation), so the action space is binary. The DDPG agent,
its state, reward and the budget cut are ``compress.haq``'s; only these differ:

- **action**: ``a >= 0.5`` keeps the layer fp32, below runs it int8 (level 1 / 0; the executed
  action stored for the critic is the centre of its half, 0.75 / 0.25);
- **constraint**: ``sum_i layer_cost(i, precision_i) <= latency_budget_ms``; the cut turns fp32
  layers into int8 from the last layer to the first until it holds (``cut_to_budget`` with
  levels), the order HAQ takes bits away in;
- **no pinned layers**: ``HaqConfig.keep_first_last`` is not applied, so all-int8 -- the floor of
  the budget and the baseline the search must beat -- stays reachable; the agent learns which
  layers are worth their milliseconds.

``layer_cost(index, precision) -> ms`` is any callable over the layers in execution order
(``quantize_cost.layer_infos``); :class:`LayerLatencyTable` is the one filled by measurement
(``compress.haq_measure.measure_layer_table``). Whatever fills it, the costs the search sees are
*predicted*; the chosen policy is then *measured* end to end (``compress.haq_measure``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from compress.haq_problem import HaqConfig, QuantProblem, cut_to_budget
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
            raise InputFileError(f"{path}: missing or malformed field {error}; need layers, int8_ms, fp32_ms") from error

    def check_layers(self, names: Sequence[str]) -> None:
        if tuple(names) != self.layers:
            raise OptionError(f"layer latency table: its layers {list(self.layers)[:3]}... ({len(self.layers)}) are "
                              f"not the model's {list(names)[:3]}... ({len(names)}); build the table for this model")


def predicted_ms(layer_cost: LayerCost, names: Sequence[str], policy: QuantPolicy) -> float:
    """Predicted latency of ``policy``: layers it names (8-bit) at int8, the others at fp32."""
    return float(sum(layer_cost(i, INT8 if name in policy.layers else FP32) for i, name in enumerate(names)))


class LatencyProblem(QuantProblem):
    """``compress.haq_problem``'s problem with levels {0: int8, 1: fp32} and a predicted-latency budget."""

    def __init__(self, base: nn.Module, batches: list, config: HaqConfig, budget_ms: float,
                 layer_cost: LayerCost) -> None:
        super().__init__(base, batches, config, search_activations=False, budget=budget_ms, by_cost=False)
        if isinstance(layer_cost, LayerLatencyTable):
            layer_cost.check_layers(self.names)
        self.layer_cost = layer_cost
        self.pinned = set()
        self.cuttable = list(range(self.steps))
        self.budget_kind = "latency_ms"

    def to_bits(self, action: float) -> int:
        return 1 if action >= 0.5 else 0

    def to_action(self, level: int) -> float:
        return 0.25 + 0.5 * level

    def policy_of(self, bits: list[int]) -> QuantPolicy:
        return QuantPolicy({n: (8, 8) for n, level in zip(self.names, bits) if level == 0})

    def resource(self, policy: QuantPolicy) -> float:
        return predicted_ms(self.layer_cost, self.names, policy)

    def allowed(self, bits: list[int]) -> list[int]:
        return list(bits)

    def check_reachable(self) -> None:
        floor = self.resource(self.policy_of([0] * self.steps))
        if floor > self.budget:
            raise OptionError(f"search_quant_policy: latency_budget_ms={self.budget:g} is below the minimum "
                              f"{floor:.4g} ms (every layer int8, predicted by layer_cost)")

    def fit(self, bits: list[int]) -> list[int]:
        return cut_to_budget(list(bits), lambda b: self.resource(self.policy_of(b)), self.budget,
                             self.cuttable, 0)
