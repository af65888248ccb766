"""Running a search: `SearchConfig` (what to search), `run_search` (the in-process loop, or Ray
Tune through `nas.search.ray_runner`), resume, and `finalize_best` (retrain, test, measure the winner).

The default loop imports no Ray: ask -> evaluate -> append trial -> tell -> save searcher state ->
update best, one trial at a time (see `nas.search.session` for why in that order).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.training.data import DataSplits, load_dataset
from nas.search.trial import evaluate_candidate, precheck, retrain, train_candidate
from nas.search.progress import SearchProgress
from nas.rundir.files import RunDirError, RunDirectory
from nas.search.session import SearchSession
from nas.strategies.base import SEARCHERS, Candidate, Searcher, SearchObjective
from nas.training.train import TrainConfig
from predictors.latency import LatencyTable, Measurer, MissingEntriesError
from search_spaces.errors import OptionError
from nas.search.config import SearchConfig
from search_spaces.space import SearchSpace
from search_spaces.spaces import get_space

logger = logging.getLogger(__name__)

__all__ = ["SearchConfig", "SearchSummary", "finalize_best", "make_searcher", "run_search"]

@dataclass(frozen=True)
class SearchSummary:
    run_dir: Path
    trials: int
    ok: int
    failed: int
    infeasible: int
    best: dict[str, Any] | None  # the trials.jsonl record of the best feasible trial
    elapsed_s: float
    resumed: bool = False
    replayed: int = 0


def make_searcher(config: SearchConfig, space: SearchSpace, objective: SearchObjective, table: LatencyTable,
                  run_dir: RunDirectory) -> Searcher:
    """The strategy named in the config. Optional constructor arguments (Optuna's storage, the
    trial budget) are passed to the strategies that take them."""
    import nas.strategies  # noqa: F401  (registers the built-in strategies)

    cls = SEARCHERS.get(config.strategy)

    def is_feasible(arch: Any) -> bool:
        try:
            return table.predict(arch) <= objective.latency_budget_ms
        except MissingEntriesError:
            return False  # the table cannot vouch for it

    parameters = inspect.signature(cls).parameters
    offered = {"storage": run_dir.optuna_storage, "num_trials": config.trials}
    options = {key: value for key, value in offered.items() if key in parameters}
    options.update(config.strategy_options)
    # a soft constraint trains over-budget networks too, so nothing is pre-rejected
    feasible = is_feasible if config.constraint == "hard" else None
    return cls(space, objective, seed=config.seed, is_feasible=feasible, **options)


def load_search_data(config: SearchConfig) -> DataSplits:
    return load_dataset(config.dataset, config.resolution, seed=config.seed, limit=config.train_limit)


def open_table(config: SearchConfig, space: SearchSpace) -> LatencyTable:
    table = LatencyTable.load(config.lut_path)
    table.check_fits(space=space.name, resolution=space.resolution, num_classes=space.num_classes,
                     source=config.lut_path)
    return table


def run_search(config: SearchConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
               progress: bool = True, given: dict[str, Any] | None = None) -> SearchSummary:
    """Run (or resume) a search into `run_dir`.

    Fresh: `config` is required and `run_dir` must not hold a run. Resume: the run's config.json
    is the config; `config` (or `given`, a dict of only the settings the user passed) must agree
    with it except for execution settings (Ray, workers)."""
    directory = RunDirectory(run_dir)
    strategy = SearchConfig.from_dict(directory.read_config()).strategy if resume else getattr(config, "strategy", None)
    if strategy == "proxyless":  # one-shot: a supernet trained once, not an ask/tell Searcher
        from nas.oneshot.proxyless_run import run_proxyless_search  # function-level: avoids an import cycle

        return run_proxyless_search(config, run_dir, resume=resume, progress=progress, given=given)
    if resume:
        stored = SearchConfig.from_dict(directory.read_config())
        overrides = dict(given or {})
        if config is not None:
            overrides = {**config.to_dict(), **overrides}
        config = stored.resumed_with(overrides)
        directory.write_config(config.to_dict())
    else:
        if config is None:
            raise ValueError("run_search: config is required for a new run")
        if directory.exists():
            raise RunDirError(f"{directory.path} already holds a search; resume it with "
                                  f"--resume {directory.path} or choose another --name")
        directory.path.mkdir(parents=True, exist_ok=True)
    directory.repair_trials()

    data = load_search_data(config)
    num_classes = config.num_classes or data.num_classes
    if num_classes != data.num_classes:
        raise OptionError(f"SearchConfig.num_classes={config.num_classes} but dataset {config.dataset!r} "
                         f"has {data.num_classes} classes")
    if config.num_classes is None:
        config = replace(config, num_classes=num_classes)
    if not resume:
        directory.write_config(config.to_dict())
    space = get_space(config.space, resolution=config.resolution, num_classes=num_classes, **config.space_options)
    table = open_table(config, space)
    objective = SearchObjective(config.latency_budget_ms, config.constraint)
    searcher = make_searcher(config, space, objective, table, directory)

    saved = directory.read_searcher_state()
    told: set[int] = set()
    if saved is not None:
        if saved.get("strategy") != searcher.name:
            raise RunDirError(f"{directory.searcher_path}: state of strategy {saved.get('strategy')!r}, "
                             f"the run uses {searcher.name!r}")
        searcher.load_state_dict(saved["state"])
        told = set(saved.get("told_trial_ids", []))
    session = SearchSession(directory, searcher, objective, config.trials, told_trial_ids=told)
    if session.finished > config.trials:
        logger.warning("%s holds %d trials, more than trials=%d", directory.trials_path, session.finished, config.trials)
    replayed = session.replay()

    def retrain_trial(candidate: Candidate) -> Any:
        checked = precheck(candidate, table, objective)
        if checked.verdict is not None:
            return None
        return train_candidate(candidate, checked, data=data, train_config=config.train)[1]

    session.reconcile_best(retrain_trial)
    started = session.started = time.perf_counter()
    with SearchProgress(session, enabled=progress):
        if session.remaining == 0:
            logger.info("%s already holds all %d trials", directory.path, config.trials)
        elif config.uses_ray:
            from nas.search.ray_runner import run_on_ray  # the only place Ray is imported

            run_on_ray(config, session, table, objective)
        else:
            _run_local(config, session, data, table, objective)
    session.reconcile_best(retrain_trial)
    counts = session.counts()
    return SearchSummary(directory.path, session.finished, counts.get("ok", 0), counts.get("failed", 0),
                         counts.get("infeasible", 0), session.best, time.perf_counter() - started,
                         resumed=resume, replayed=replayed)


def _run_local(config: SearchConfig, session: SearchSession, data: DataSplits, table: LatencyTable,
               objective: SearchObjective) -> None:
    while session.remaining > 0:
        candidate = session.ask()
        result, model = evaluate_candidate(candidate, data=data, train_config=config.train, table=table,
                                           objective=objective)
        session.finish(candidate, result, model=model)


def finalize_best(run_dir: str | os.PathLike, *, epochs: int, measurer: Measurer | None,
                  progress: bool = False) -> dict[str, Any]:
    """Retrain best/'s architecture for `epochs` from scratch (train split; val monitors), report
    test accuracy, measure it end to end with `measurer`, and save weights and metrics in best/."""
    directory = RunDirectory(run_dir)
    config = SearchConfig.from_dict(directory.read_config())
    arch = directory.read_best_arch()
    # the whole training split: `train_limit` only makes search trials cheaper
    data = load_dataset(config.dataset, config.resolution, seed=config.seed)
    space = get_space(config.space, resolution=config.resolution, num_classes=arch.num_classes,
                      **config.space_options)
    table = open_table(config, space)
    train_config = replace(config.train, epochs=epochs, warmup_epochs=min(config.train.warmup_epochs, epochs))
    metrics, model = retrain(arch, data, train_config, measurer, table, progress=progress)
    directory.write_best(arch, {**(directory.read_best_metrics() or {}), **metrics, "weights_from": "final"},
                         state_dict=model.state_dict())
    return directory.read_best_metrics() or metrics
