"""One run of `bench.nb201_strategies`, in a worker process: a strategy driven in memory on the
NAS-Bench-201 table for one (data set, latency model, budget quantile) setting and seed, and the
setting's facts (budget, feasible cells, best feasible accuracy, the exact regret of uniform search).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

CHECKPOINTS = (10, 30, 100, 300)
_CACHE: dict[Any, Any] = {}


def key_of(setting: tuple[str, str, float]) -> str:
    dataset, latency, quantile = setting
    return f"{dataset}-{latency.replace(':', '_')}-q{round(100 * quantile)}"


def setting_facts(setting: tuple[str, str, float]) -> dict[str, Any]:
    """Budget, feasible cells and the best feasible test accuracy of a setting (from the table)."""
    if setting not in _CACHE:
        from predictors.latency import open_latency_model
        from predictors.tabular import NB201Dataset
        from search_spaces.spaces import get_space

        dataset, latency, quantile = setting
        data = NB201Dataset(dataset)
        model = open_latency_model(latency)
        budget = model.exact_quantile(dataset, quantile)
        values = model.column_for(dataset)
        feasible = ~np.isnan(values) & (values <= budget)
        test = data.table.column(f"{dataset}_test_acc")
        space = get_space("nb201", resolution=data.resolution, num_classes=data.num_classes)
        _CACHE[setting] = {"data": data, "model": model, "space": space, "budget_ms": budget,
                           "feasible": int(feasible.sum()), "best": float(test[feasible].max()),
                           "connected": int(data.table.connected.sum()),
                           "uniform_regret": uniform_regret(test[feasible], CHECKPOINTS)}
    return _CACHE[setting]


def published_score(space: Any, proxy: str) -> Any:
    """Architecture -> NAS-Bench-Suite-Zero's published CIFAR-10 `proxy` score (NaN without one)."""
    if ("zc", proxy) not in _CACHE:
        import csv

        from predictors.tabular.nb201 import default_table_path

        with open(default_table_path().parent / "nb201_zc.csv", newline="") as file:
            _CACHE["zc", proxy] = {row["arch"]: float(row[f"zc_cifar10_{proxy}"]) for row in csv.DictReader(file)}
    scores = _CACHE["zc", proxy]
    return lambda arch: scores.get(space.arch_string(arch), math.nan)


def uniform_regret(accuracies: np.ndarray, queries: tuple[int, ...]) -> dict[str, float]:
    """The exact expected regret of n uniform draws without repeats from the feasible cells (what
    `random` does): P(best of n <= the i-th smallest) = C(i, n) / C(N, n). No seeds, no noise: the
    yardstick the measured random runs must agree with."""
    from scipy.special import gammaln

    ordered = np.sort(accuracies)
    count = len(ordered)
    i = np.arange(1, count + 1)
    expected = {}
    for n in queries:
        log_choose = gammaln(i + 1) - gammaln(n + 1) - gammaln(np.maximum(i - n, 0) + 1)
        total = gammaln(count + 1) - gammaln(n + 1) - gammaln(count - n + 1)
        cdf = np.where(i >= n, np.exp(log_choose - total), 0.0)
        expected[str(n)] = float(ordered[-1] - np.sum(np.diff(np.concatenate([[0.0], cdf])) * ordered))
    return expected


MULTI_FIDELITY = ("successive-halving",)
MAX_TRIALS_PER_QUERY = 20  # their cheap trials cost a fraction of a query: at most this many per query


def cost_curve(trials: list[Any], cost: Any, counts: Any, accuracy: Any, queries: int) -> list[float | None]:
    """Best test accuracy (%) of the trials that `counts` (feasible, full schedule) found within a
    cost of 1, 2, ..., `queries` full queries; None before the first."""
    curve, best, spent, index = [], -math.inf, 0.0, 0
    for budget in range(1, queries + 1):
        while index < len(trials) and spent + cost(trials[index]) <= budget + 1e-9:
            spent += cost(trials[index])
            if counts(trials[index]):
                best = max(best, 100 * accuracy(trials[index].candidate.arch))
            index += 1
        curve.append(round(best, 5) if best > -math.inf else None)
    return curve


def run_one(setting: tuple[str, str, float], strategy: str, seed: int, queries: int) -> dict[str, Any]:
    import torch

    from nas.search.memory import run_in_memory
    from nas.strategies.base import SearchObjective

    torch.set_num_threads(1)  # mnas-rl's controller: one thread is 2-3x faster on a shared 2-core box
    logging.getLogger("nas").setLevel(logging.WARNING)
    facts = setting_facts(setting)
    data = facts["data"]
    started = time.perf_counter()
    name, _, proxy = strategy.partition(":")
    score = published_score(facts["space"], proxy) if proxy else None

    def cost(trial: Any) -> float:  # a 12-epoch answer costs 0.06 of a 200-epoch one
        return (trial.result.epochs or data.epochs) / data.epochs

    spent = 0.0

    def cost_reached(done: list[Any]) -> bool:
        nonlocal spent
        spent += cost(done[-1])
        return spent >= queries - 1e-9

    # the trial budget sizes some strategies (evolution's population): only multi-fidelity ones get more
    cap = queries * MAX_TRIALS_PER_QUERY if name in MULTI_FIDELITY else queries
    trials = run_in_memory(name, facts["space"], SearchObjective(facts["budget_ms"]), facts["model"], data,
                           trials=cap, seed=seed, score=score, until=cost_reached)
    curve = cost_curve(trials, cost, lambda trial: (trial.feasible and (trial.result.epochs or data.epochs)
                                                   == data.epochs), data.test_accuracy, queries)
    return {"setting": key_of(setting), "strategy": strategy, "seed": seed, "queries": queries, "curve": curve,
            "infeasible": sum(not t.feasible for t in trials),
            "unique": len({t.candidate.arch.content_hash() for t in trials}),
            "ask_tell_s": sum(t.ask_s + t.tell_s for t in trials), "evaluate_s": sum(t.evaluate_s for t in trials),
            "wall_s": time.perf_counter() - started}
