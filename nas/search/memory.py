"""A search without a run directory: ask, evaluate, tell, all in memory.

For benchmarks on tabular data (`bench.nb201_strategies`), where a trial is a table lookup and the
run directory's durable steps (an fsync'ed line per trial, the searcher state after every tell)
would cost a thousand times the trial itself. Trials are evaluated by the same
`nas.search.trial.evaluate_candidate` as `run_search`'s, and the strategy is built by the same
`build_searcher`, so a strategy sees exactly what it sees in a real run; nothing is written, so
there is no resume (a benchmark re-runs a seed instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nas.search.runner import build_searcher
from nas.search.trial import evaluate_candidate
from nas.strategies.base import ONE_SHOT, Candidate, Result, SearchObjective
from nas.training.train import TrainConfig
from predictors.latency import LatencyModel
from search_spaces.errors import OptionError
from search_spaces.space import SearchSpace

__all__ = ["MemoryTrial", "run_in_memory"]


@dataclass(frozen=True)
class MemoryTrial:
    """One trial: what was asked, what the evaluation answered, whether it is feasible under the
    objective, and the seconds spent in the searcher (`ask_s`, `tell_s`) and the evaluation."""

    candidate: Candidate
    result: Result
    feasible: bool
    ask_s: float
    evaluate_s: float
    tell_s: float


def run_in_memory(strategy: str, space: SearchSpace, objective: SearchObjective, table: LatencyModel, data: Any,
                  *, trials: int, seed: int, options: dict[str, Any] | None = None,
                  train_config: TrainConfig | None = None, score: Any = None,
                  until: Callable[[list[MemoryTrial]], bool] | None = None) -> list[MemoryTrial]:
    """`trials` trials of ask/tell strategy `strategy` (an Optuna strategy keeps its study in
    memory). `data` is what `run_search` would load: a tabular dataset answers each trial, image
    splits train it with `train_config`. `score`: the cheap score of `StrategyContext.score`. `until`:
    stop earlier, once it says so of the trials done (a cost budget for multi-fidelity runs)."""
    train_config = train_config or TrainConfig(seed=seed)
    searcher = build_searcher(strategy, space, objective, table, seed=seed, trials=trials, options=options,
                              data=data, train=train_config, score=score)
    if searcher.kind == ONE_SHOT:
        raise OptionError(f"strategy {strategy!r} is one-shot: it trains a supernet and has no ask/tell loop to run "
                          "in memory")
    searcher.prepare()
    done: list[MemoryTrial] = []
    clock = time.perf_counter
    for _ in range(trials):
        start = clock()
        candidate = searcher.ask()
        asked = clock()
        result, _ = evaluate_candidate(candidate, data=data, train_config=train_config, table=table,
                                       objective=objective)
        evaluated = clock()
        searcher.tell(candidate, result)
        told = clock()
        done.append(MemoryTrial(candidate, result, objective.feasible(result), asked - start, evaluated - asked,
                                told - evaluated))
        if until is not None and until(done):
            break
    return done
