"""Running a search: `SearchConfig` (what to search), `run_search` (the in-process loop, or Ray
Tune through `nas.search.ray_runner`), resume, and `finalize_best` (retrain, test, measure the winner).

The default loop imports no Ray: ask -> evaluate -> append trial -> tell -> save searcher state ->
update best, one trial at a time (see `nas.search.session` for why in that order).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.training.data import DataSplits, is_tabular, load_dataset
from nas.search.trial import evaluate_candidate, precheck, retrain, train_candidate
from nas.search.progress import SearchProgress
from nas.rundir.files import RunDirError, RunDirectory
from nas.rundir.records import BestMetrics, TrialRecord
from nas.rundir.repair import RepairReport, repair_run
from nas.search.session import SearchSession
from nas.strategies.base import ONE_SHOT, SEARCHERS, Candidate, Searcher, SearchObjective, StrategyContext
from predictors.latency import LatencyModel, Measurer, MissingEntriesError, open_latency_model
from predictors.tabular import TabularDataset
from search_spaces.errors import OptionError
from nas.search.config import SearchConfig, flag_of
from search_spaces.space import SearchSpace
from search_spaces.spaces import get_space

logger = logging.getLogger(__name__)

__all__ = ["SearchConfig", "SearchSummary", "build_searcher", "checked_strategy", "finalize_best", "run_search",
           "strategy_descriptions"]

@dataclass(frozen=True)
class SearchSummary:
    run_dir: Path
    trials: int
    ok: int
    failed: int
    infeasible: int
    best: TrialRecord | None  # the best feasible trial
    elapsed_s: float
    resumed: bool = False
    replayed: int = 0


def strategy_class(name: str) -> type[Searcher]:
    """The registered strategy `name`, ask/tell or one-shot."""
    strategy_descriptions()  # registers the built-in strategies
    return SEARCHERS.get(name)


def strategy_descriptions() -> list[dict[str, Any]]:
    """Every registered strategy, ask/tell and one-shot, as `Searcher.describe` gives it."""
    import nas.oneshot  # noqa: F401  (registers the one-shot strategies)
    import nas.strategies  # noqa: F401  (registers the ask/tell strategies)

    return [SEARCHERS.get(name).describe() for name in SEARCHERS.names()]


def checked_strategy(config: SearchConfig, space: SearchSpace, objective: SearchObjective, table: LatencyModel,
                     run_dir: RunDirectory, data: DataSplits | TabularDataset | None = None,
                     progress: bool = False) -> tuple[type[Searcher], StrategyContext, Any]:
    """The strategy named in the config, the one context every strategy receives, and its options
    checked; nothing is built or written yet (an Optuna strategy opens its storage when built)."""
    return _checked(config.strategy, space, objective, table, seed=config.seed, trials=config.trials,
                    options=config.strategy_options, storage=run_dir.optuna_storage, work_dir=run_dir.path,
                    data=data, train=config.train, progress=progress)


def build_searcher(strategy: str, space: SearchSpace, objective: SearchObjective, table: LatencyModel, *,
                   seed: int, trials: int | None, options: dict[str, Any] | None = None, **context: Any) -> Searcher:
    """Strategy `strategy` built with its context, outside any run directory (`run_in_memory`)."""
    cls, built_context, parsed = _checked(strategy, space, objective, table, seed=seed, trials=trials,
                                          options=options, **context)
    return cls(built_context, parsed)


def _checked(strategy: str, space: SearchSpace, objective: SearchObjective, table: LatencyModel, *, seed: int,
             trials: int | None, options: dict[str, Any] | None = None, storage: str | None = None,
             work_dir: Path | None = None, data: Any = None, train: Any = None, progress: bool = False,
             score: Any = None) -> tuple[type[Searcher], StrategyContext, Any]:
    """Under a hard constraint the latency model's budget check is the strategy's pre-check."""
    def is_feasible(arch: Any) -> bool:
        try:
            return table.predict(arch) <= objective.latency_budget_ms
        except MissingEntriesError:
            return False  # the table cannot vouch for it

    # a soft constraint trains over-budget networks too, so nothing is pre-rejected
    context = StrategyContext(
        space, objective, seed=seed, is_feasible=is_feasible if objective.constraint == "hard" else None,
        trials=trials, storage=storage, work_dir=work_dir, table=table, data=data, train=train, progress=progress,
        score=score)
    cls = strategy_class(strategy)
    return cls, context, cls.parse_options(context, dict(options or {}))


def load_search_data(config: SearchConfig) -> DataSplits | TabularDataset:
    data = load_dataset(config.dataset, config.resolution, seed=config.seed, limit=config.train_limit, tabular=True)
    if isinstance(data, TabularDataset):
        if config.uses_ray:
            raise OptionError(f"--dataset {config.dataset}: a tabular dataset answers trials in microseconds; "
                              "run it without --ray / --ray-address")
        if config.train_limit is not None:
            raise OptionError(f"--train-limit: not used with the tabular dataset {config.dataset!r} (nothing is trained)")
    return data


def open_table(config: SearchConfig, space: SearchSpace) -> LatencyModel:
    """The run's latency model: a `LatencyTable` file, or a tabular model named by `--lut`
    (`hwnasbench:<device>`, `help:<device>`), checked against the space."""
    table = open_latency_model(config.lut_path)
    table.check_fits(space=space.name, resolution=space.resolution, num_classes=space.num_classes,
                     source=config.lut_path)
    return table


def run_search(config: SearchConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
               progress: bool = True, given: dict[str, Any] | None = None, repair: bool = False,
               on_repair: Callable[[RepairReport], None] | None = None) -> SearchSummary:
    """Run (or resume) a search into `run_dir`, whatever the strategy's kind.

    Fresh: `config` is required and `run_dir` must not hold a run. Resume: the run's config.json
    is the config; `given` (the settings the user passed) may hold execution settings (Ray,
    workers) only (`SearchConfig.resumed_with`); `repair`: first make run files that disagree
    agree again (`nas.rundir.repair.repair_run`, under the same writer lock), and hand its report
    to `on_repair` before any trial runs (default: log it)."""
    if repair and not resume:
        raise OptionError("--repair: only with --resume RUN (a new run has nothing to repair)")
    directory = RunDirectory(run_dir)
    config = _resolve_config(directory, config, resume, given)
    data = load_search_data(config)
    if config.num_classes not in (None, data.num_classes):
        raise OptionError(f"SearchConfig.num_classes={config.num_classes} but dataset {config.dataset!r} "
                          f"has {data.num_classes} classes")
    config = replace(config, num_classes=data.num_classes)
    space = get_space(config.space, resolution=config.resolution, num_classes=data.num_classes,
                      **config.space_options)
    table = open_table(config, space)
    objective = SearchObjective(config.latency_budget_ms, config.constraint)
    if not resume:
        refuse_unused_settings(strategy_class(config.strategy), config)
    strategy, context, options = checked_strategy(config, space, objective, table, directory, data, progress)
    # everything is checked: from here on this process is the run directory's one writer
    with directory.writing(new=not resume):
        if repair:
            report = repair_run(directory, planned=config.trials)
            (on_repair or _log_repair)(report)
        directory.repair_trials()
        searcher = strategy(context, options)
        if searcher.kind == ONE_SHOT:
            config = replace(config, trials=1)
        directory.write_config(config.to_dict())
        return _search(config, directory, searcher, objective, table, data, resume=resume, progress=progress)


def _log_repair(report: RepairReport) -> None:
    logger.warning("%s", "\n".join(report.lines()))


def _search(config: SearchConfig, directory: RunDirectory, searcher: Searcher, objective: SearchObjective,
            table: LatencyModel, data: DataSplits | TabularDataset, *, resume: bool, progress: bool) -> SearchSummary:
    """The search loop of `run_search`: resume bookkeeping, prepare, ask/evaluate/tell, best/."""
    tabular = isinstance(data, TabularDataset)
    session = _open_session(directory, searcher, objective, config.trials, weights=not tabular)
    replayed = session.replay()
    # a one-shot strategy's derived network is its answer: trained even when it ends over the budget
    trial_objective = objective if searcher.kind != ONE_SHOT else replace(objective, constraint="soft")

    def retrain_trial(candidate: Candidate) -> Any:
        if tabular:
            return None  # a tabular trial has no weights (the session does not expect any)
        checked = precheck(candidate, table, trial_objective)
        if checked.verdict is not None:
            return None
        return train_candidate(candidate, checked, data=data, train_config=config.train)[1]

    session.reconcile_best(retrain_trial)
    started = session.started = time.perf_counter()
    if session.remaining > 0:
        searcher.prepare()
        session.save_state()
    with SearchProgress(session, enabled=progress):
        if session.remaining == 0:
            logger.info("%s already holds all %d trials", directory.path, config.trials)
        elif config.uses_ray:
            from nas.search.ray_runner import run_on_ray  # the only place Ray is imported

            run_on_ray(config, session, table, objective)
        else:
            _run_local(config, session, data, table, trial_objective)
    session.reconcile_best(retrain_trial)
    counts = session.counts()
    return SearchSummary(directory.path, session.finished, counts.get("ok", 0), counts.get("failed", 0),
                         counts.get("infeasible", 0), session.best, time.perf_counter() - started,
                         resumed=resume, replayed=replayed)


def _open_session(directory: RunDirectory, searcher: Searcher, objective: SearchObjective,
                  trials: int, weights: bool = True) -> SearchSession:
    """The run's session, its searcher restored from searcher.json when the run has one."""
    saved = directory.read_searcher_state()
    told: set[int] = set()
    if saved is not None:
        if saved.get("strategy") != searcher.name:
            raise RunDirError(f"{directory.searcher_path}: state of strategy {saved.get('strategy')!r}, "
                              f"the run uses {searcher.name!r}")
        told_ids = saved.get("told_trial_ids", [])
        try:
            if not isinstance(saved.get("state"), dict):
                raise TypeError(f"'state' is {type(saved.get('state')).__name__}, expected an object")
            if not isinstance(told_ids, list) or not all(type(i) is int for i in told_ids):
                raise TypeError("'told_trial_ids' must be a list of ints")
            searcher.load_state_dict(saved["state"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            # a hand-edited or foreign file; the trials themselves are safe in trials.jsonl
            raise RunDirError(f"{directory.searcher_path}: unreadable {searcher.name!r} state ({type(error).__name__}: "
                              f"{error}); restore the file, or move it aside to resume with a fresh strategy "
                              "state (finished trials are kept)") from None
        told = set(told_ids)
    session = SearchSession(directory, searcher, objective, trials, told_trial_ids=told, weights=weights)
    if session.finished > trials:
        logger.warning("%s holds %d trials, more than trials=%d", directory.trials_path, session.finished, trials)
    return session


def _resolve_config(directory: RunDirectory, config: SearchConfig | None, resume: bool,
                    given: dict[str, Any] | None) -> SearchConfig:
    if resume:
        if config is not None:
            raise ValueError("run_search: a resumed run keeps its config.json; pass execution settings as given=")
        return SearchConfig.from_dict(directory.read_config()).resumed_with(given or {})
    if config is None:
        raise ValueError("run_search: config is required for a new run")
    if directory.exists():
        raise RunDirError(f"{directory.path} already holds a search; resume it with "
                          f"--resume {directory.path} or choose another --name")
    return config  # the directory is created with config.json, once everything has been checked


def refuse_unused_settings(strategy: type[Searcher], config: SearchConfig | None = None,
                           typed: tuple[str, ...] = ()) -> None:
    """A setting the strategy would ignore is refused: whoever set it meant something by it.
    `typed`: settings the user gave explicitly (the CLI knows), refused even at their default."""
    defaults = SearchConfig.__dataclass_fields__
    unused = [name for name in strategy.unused_settings
              if name in typed or (config is not None and getattr(config, name) != defaults[name].default)]
    if unused:
        raise OptionError(f"{', '.join(flag_of(name) for name in unused)}: not used by the {strategy.kind} strategy "
                          f"{strategy.name!r} (`nas strategies` says what each strategy takes)")


def _run_local(config: SearchConfig, session: SearchSession, data: DataSplits | TabularDataset, table: LatencyModel,
               objective: SearchObjective) -> None:
    deadline = None if config.time_limit is None else session.started + config.time_limit
    while session.remaining > 0:
        if deadline is not None and session.finished > 0 and time.perf_counter() >= deadline:
            logger.info("time limit of %.0f s reached after %d trials", config.time_limit, session.finished)
            break
        candidate = session.ask()
        result, model = evaluate_candidate(candidate, data=data, train_config=config.train, table=table,
                                           objective=objective)
        session.finish(candidate, result, model=model)


def finalize_best(run_dir: str | os.PathLike, *, epochs: int, measurer: Measurer | None,
                  progress: bool = False) -> BestMetrics:
    """Retrain best/'s architecture for `epochs` from scratch (train split; val monitors), report
    test accuracy, measure it end to end with `measurer`, and save weights and metrics in best/.
    A run on a tabular dataset has nothing to retrain (its figures are the table's, after the
    table's full schedule): `OptionError` (`nas search` skips the step with a line saying so)."""
    directory = RunDirectory(run_dir)
    config = SearchConfig.from_dict(directory.read_config())
    if is_tabular(config.dataset):
        raise OptionError(f"{directory.path}: searched on the tabular dataset {config.dataset!r}; there are no "
                          "images to retrain on (the best trial's figures are the table's)")
    arch = directory.read_best_arch()
    # the whole training split: `train_limit` only makes search trials cheaper
    data = load_dataset(config.dataset, config.resolution, seed=config.seed)
    space = get_space(config.space, resolution=config.resolution, num_classes=arch.num_classes,
                      **config.space_options)
    table = open_table(config, space)
    train_config = replace(config.train, epochs=epochs, warmup_epochs=min(config.train.warmup_epochs, epochs))
    best = directory.read_best_metrics(required=True)
    metrics, model = retrain(arch, data, train_config, measurer, table, progress=progress)
    best = best.finalized(metrics)
    directory.write_best(arch, best, state_dict=model.state_dict())
    return best
