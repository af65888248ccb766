"""Searching per-unit prune ratios under a MACs or latency budget, in the spirit of AMC
(He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018).

What we keep from AMC:
- the action space: one continuous ratio per prunable unit, in [0, max_ratio];
- the budget as a hard constraint enforced on every candidate, not as a penalty: AMC limits each
  action so that the remaining layers can still meet the budget; we *repair* a candidate instead,
  moving every ratio the same fraction s of the way to `max_ratio`, with s the smallest that meets
  the budget (bisection). A vector of zeros repairs to the smallest uniform ratio that fits, the
  natural baseline, which is always the first candidate;
- the cheap reward: AMC scores a pruned network by its validation accuracy *without* fine-tuning,
  on a small held-out set. Here the reward is whatever `evaluate(pruned_spec, pruned_state_dict)`
  returns (higher is better): typically that accuracy, or accuracy after a short fine-tune.

What we replace: AMC's DDPG agent. A learned agent pays off over hundreds of episodes on deep
networks; with the tens of evaluations a CPU session affords, a seeded regularised search is
as good and simpler to reproduce: random vectors first, then mutations of the best so far
(a few units perturbed with Gaussian noise), each repaired into the budget. Networks that round
to the same widths are evaluated once.

Costs come from the spec alone (`plan_prune` + `predictors.cost.macs_of_spec`, or a latency
predictor: a callable spec -> ms or a `LatencyTable`), so only the evaluation touches weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from compress.prune import MAX_RATIO, PrunePolicy, plan_prune, prunable_units, prune
from predictors.cost import macs_of_spec
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

Evaluate = Callable[[ArchSpec, dict[str, Tensor]], float]


@dataclass
class PruneSearchReport:
    base_macs: int
    budget_macs: int | None
    budget_ms: float | None
    best_reward: float
    best_macs: int
    best_latency_ms: float | None
    best_ratios: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _BudgetedRatios:
    """Ratio vectors over `names` and their costs (cached per pruned network), with the repair that
    moves a vector into the budget."""

    def __init__(self, spec: ArchSpec, names: list[str], criterion: str, round_to: int, max_ratio: float,
                 budget_macs: int | None, budget_ms: float | None, predict: Callable[[ArchSpec], float] | None) -> None:
        self.spec, self.names, self.criterion, self.round_to, self.max_ratio = spec, names, criterion, round_to, max_ratio
        self.budget_macs, self.budget_ms, self.predict = budget_macs, budget_ms, predict
        self.costs: dict[str, tuple[int, float | None]] = {}

    def policy_of(self, vector: np.ndarray) -> PrunePolicy:
        return PrunePolicy(self.criterion, {n: float(r) for n, r in zip(self.names, vector)}, self.round_to)

    def cost(self, vector: np.ndarray) -> tuple[ArchSpec, int, float | None, bool]:
        pruned = plan_prune(self.spec, self.policy_of(vector)).spec
        key = pruned.content_hash()
        if key not in self.costs:
            self.costs[key] = (macs_of_spec(pruned), None if self.predict is None else float(self.predict(pruned)))
        macs, ms = self.costs[key]
        fits = ((self.budget_macs is None or macs <= self.budget_macs)
                and (self.budget_ms is None or ms <= self.budget_ms))
        return pruned, macs, ms, fits

    def repair(self, vector: np.ndarray) -> np.ndarray:
        max_ratio = self.max_ratio
        # ceil to 4 decimals: readable policies, and rounding up only prunes more
        vector = np.minimum(np.ceil(np.clip(vector, 0.0, max_ratio) * 1e4) / 1e4, max_ratio)
        if self.cost(vector)[3]:
            return vector
        low, high = 0.0, 1.0
        for _ in range(20):
            middle = (low + high) / 2
            if self.cost(vector + middle * (max_ratio - vector))[3]:
                high = middle
            else:
                low = middle
        return np.minimum(np.ceil((vector + high * (max_ratio - vector)) * 1e4) / 1e4, max_ratio)

    def check_reachable(self) -> None:
        _, smallest_macs, smallest_ms, fits = self.cost(np.full(len(self.names), self.max_ratio))
        if not fits:
            raise OptionError(
                f"budget unreachable: pruning every unit by max_ratio={self.max_ratio} leaves {smallest_macs} MACs"
                + (f", {smallest_ms:.3f} ms" if smallest_ms is not None else "")
                + f" (budget: {self.budget_macs} MACs, {self.budget_ms} ms)"
            )


def _check_arguments(budget_macs: int | None, budget_ms: float | None, latency: Any, max_ratio: float,
                     trials: int) -> None:
    if budget_macs is None and budget_ms is None:
        raise OptionError("search_prune_policy needs budget_macs and/or budget_ms")
    if budget_ms is not None and latency is None:
        raise OptionError("budget_ms needs a latency predictor: latency=LatencyTable or a callable spec -> ms")
    if not 0 < max_ratio <= MAX_RATIO:
        raise OptionError(f"max_ratio={max_ratio!r} must be in (0, {MAX_RATIO}]")
    if trials < 1:
        raise OptionError(f"trials={trials!r} must be >= 1")


def _propose(ratios: _BudgetedRatios, history: list[dict[str, Any]], attempt: int, rng: np.random.Generator,
             population: int, sigma: float) -> np.ndarray:
    """The `attempt`-th candidate (1-based), repaired into the budget: the smallest uniform ratio
    that fits, then random vectors, then mutations of one of the best so far."""
    names, max_ratio = ratios.names, ratios.max_ratio
    if attempt == 1:
        return ratios.repair(np.zeros(len(names)))
    if attempt <= population:
        return ratios.repair(rng.uniform(0.0, max_ratio, len(names)))
    ranked = sorted(history, key=lambda trial: -trial["reward"])[:population]
    parent = np.array([ranked[rng.integers(len(ranked))]["ratios"][n] for n in names])
    mask = rng.random(len(names)) < max(1.0 / len(names), 0.3)
    mask[rng.integers(len(names))] = True
    return ratios.repair(parent + mask * rng.normal(0.0, sigma, len(names)))


def search_prune_policy(
    spec: ArchSpec,
    state_dict: Mapping[str, Tensor],
    evaluate: Evaluate,
    *,
    budget_macs: int | None = None,
    budget_ms: float | None = None,
    latency: Callable[[ArchSpec], float] | Any = None,
    criterion: str = "l1",
    trials: int = 20,
    seed: int = 0,
    round_to: int = 8,
    max_ratio: float = 0.8,
    units: Sequence[str] | None = None,
    population: int = 6,
    sigma: float = 0.15,
) -> tuple[PrunePolicy, PruneSearchReport]:
    """Best-rewarded prune policy of `trials` evaluated candidates that all meet the budget(s).

    `latency` (callable spec -> ms, or an object with `.predict(spec)`) is required with
    `budget_ms`. `units` restricts the search to some prunable units (default: all)."""
    _check_arguments(budget_macs, budget_ms, latency, max_ratio, trials)
    names = list(units) if units is not None else list(prunable_units(spec))
    PrunePolicy(criterion, dict.fromkeys(names, 0.0), round_to).validate(spec)
    predict = None if latency is None else (latency.predict if hasattr(latency, "predict") else latency)
    rng = np.random.default_rng(seed)
    ratios = _BudgetedRatios(spec, names, criterion, round_to, max_ratio, budget_macs, budget_ms, predict)
    ratios.check_reachable()
    evaluated: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    attempts = 0
    while len(evaluated) < trials and attempts < trials * 20:
        attempts += 1
        vector = _propose(ratios, history, attempts, rng, population, sigma)
        pruned, macs, ms, fits = ratios.cost(vector)
        key = pruned.content_hash()
        if key in evaluated or not fits:
            continue
        policy = ratios.policy_of(vector)
        pruned_spec, pruned_state = prune(spec, policy, state_dict)
        reward = float(evaluate(pruned_spec, pruned_state))
        evaluated[key] = reward
        history.append({"trial": len(history), "ratios": dict(policy.ratios), "macs": macs, "latency_ms": ms,
                        "reward": reward, "spec_hash": key})
        logger.info("prune trial %d: reward %.4f, %d MACs%s", len(history) - 1, reward, macs,
                    f", {ms:.3f} ms" if ms is not None else "")
    best = max(history, key=lambda trial: trial["reward"])  # first of equals: the uniform baseline wins ties
    report = PruneSearchReport(
        base_macs=macs_of_spec(spec), budget_macs=budget_macs, budget_ms=budget_ms, best_reward=best["reward"],
        best_macs=best["macs"], best_latency_ms=best["latency_ms"], best_ratios=dict(best["ratios"]),
        trials=history,
    )
    if len(history) < trials:
        logger.warning("only %d distinct pruned networks found for %d trials", len(history), trials)
    return PrunePolicy(criterion, best["ratios"], round_to), report
