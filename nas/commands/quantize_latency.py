"""`nas compress quantize --search --latency-budget MS [--lut TABLE]`: HAQ's latency mode for the
quantize command (helpers it calls; the options live on the command in `compress.py`).

The cost the agent is held to is *predicted* -- from `--lut` (an int8-aware latency table, `nas
lut build --precision int8`, one decision per block; or a per-layer table JSON written by an
earlier run) or, without it, from a per-layer table measured here in context
(`compress.haq_measure.measure_layer_table`, written as `layer_latency.json`). The chosen policy
is then *measured* end to end with uniform int8 and fp32, interleaved, and both numbers land in
metrics.json under `latency_mode`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from search_spaces.errors import InputFileError

logger = logging.getLogger(__name__)

LAYER_TABLE_FILE = "layer_latency.json"


def load_cost(path: Path) -> Any:
    """A per-layer table (`LayerLatencyTable`) or an int8-aware `LatencyTable` from `path`."""
    from compress.haq_latency import TABLE_SCHEMA, LayerLatencyTable
    from predictors.latency.lut import LatencyTable

    try:
        schema = json.loads(Path(path).read_text()).get("schema")
    except (OSError, ValueError, AttributeError) as error:
        raise InputFileError(f"--lut {path}: cannot read a latency table ({error})") from error
    if schema == TABLE_SCHEMA:
        return LayerLatencyTable.load(path)
    table = LatencyTable.load(path)
    if "int8" not in table.precisions:
        raise InputFileError(f"--lut {path}: the table holds precision(s) {', '.join(table.precisions)}, not int8; "
                             f"add it with `nas lut build --precision int8` on the same file")
    return table


def latency_search(fp32: Any, evaluate: Any, calibration: list, shape: tuple[int, ...], budget_ms: float,
                   lut: Path | None, episodes: int, seed: int) -> tuple[Any, dict[str, Any], Any]:
    """HAQ under the latency budget: (policy, report, the cost model used)."""
    from compress.haq import search_quant_policy
    from compress.haq_measure import measure_layer_table

    if lut is not None:
        cost = load_cost(lut)
    else:
        logger.info("no --lut: measuring a per-layer table in context on ONNX Runtime (1 thread, batch 1)")
        cost = measure_layer_table(fp32, calibration, shape)
    policy, report = search_quant_policy(fp32, evaluate, calibration=calibration, latency_budget_ms=budget_ms,
                                         layer_cost=cost, episodes=episodes, seed=seed)
    return policy, report, cost


def measure_chosen(out_dir: Path, fp32: Any, chosen: Any, calibration: list, shape: tuple[int, ...], cost: Any,
                   budget_ms: float, check: Any) -> dict[str, Any]:
    """The chosen policy and uniform int8, predicted and measured end to end beside fp32."""
    from compress.haq_latency import LayerLatencyTable
    from compress.haq_measure import latency_problem, measure_policies, single_fp32_policy

    problem = latency_problem(fp32, calibration, cost, budget_ms)
    if isinstance(cost, LayerLatencyTable):
        cost.save(out_dir / LAYER_TABLE_FILE)
    policies = {"haq": chosen, "uniform_int8": single_fp32_policy(problem.names, None)}
    measured = measure_policies(fp32, policies, calibration, shape, predict=problem.resource, check_inputs=check)
    return {"latency_budget_ms": budget_ms, "prediction_source": problem.cost_source, **measured}
