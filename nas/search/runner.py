"""Running a search: `SearchConfig` (what to search), `run_search` (the in-process loop, or Ray
Tune through `nas.search.ray_runner`), resume, and `finalize_best` (retrain, test, measure the winner).

The default loop imports no Ray: ask -> evaluate -> append trial -> tell -> save searcher state ->
update best, one trial at a time (see `nas.search.session` for why in that order).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
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
from search_spaces.space import SearchSpace, get_space

logger = logging.getLogger(__name__)

__all__ = ["SearchConfig", "SearchSummary", "finalize_best", "make_searcher", "run_search"]

CONSTRAINTS = ("hard", "soft")
# Settings of *how* trials run, not *what* is searched: a resumed run may change them.
EXECUTION_FIELDS = ("ray", "ray_address", "workers", "cpus_per_trial", "max_failures")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; stored as the run's config.json."""

    space: str
    latency_budget_ms: float
    lut_path: str
    dataset: str = "digits"
    resolution: int = 32
    num_classes: int | None = None  # None: the dataset's
    space_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the space
    strategy: str = "evolution"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    trials: int = 60
    constraint: str = "hard"
    train: TrainConfig = field(default_factory=TrainConfig)
    train_limit: int | None = None  # cap on training images per trial (a stratified subset)
    ray: bool = False
    ray_address: str | None = None  # implies ray
    workers: int = 1
    cpus_per_trial: float = 1.0
    asha: bool = False
    max_failures: int = 2

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> OptionError:
            return OptionError(f"SearchConfig.{name}={getattr(self, name)!r}: expected {expected}")

        for name in ("space", "dataset", "strategy", "lut_path"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        budget = self.latency_budget_ms
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (math.isfinite(budget) and budget > 0):
            raise bad("latency_budget_ms", "a finite number of milliseconds > 0")
        if not _is_int(self.resolution) or self.resolution < 8:
            raise bad("resolution", "an int >= 8")
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 2):
            raise bad("num_classes", "None (the dataset's) or an int >= 2")
        for name in ("space_options", "strategy_options"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "a JSON object of keyword arguments")
        if not _is_int(self.seed):
            raise bad("seed", "an int")
        if not _is_int(self.trials) or self.trials < 1:
            raise bad("trials", "an int >= 1")
        if self.constraint not in CONSTRAINTS:
            raise bad("constraint", f"one of {list(CONSTRAINTS)}")
        if not isinstance(self.train, TrainConfig):
            raise bad("train", "a TrainConfig")
        if self.train_limit is not None and (not _is_int(self.train_limit) or self.train_limit < 1):
            raise bad("train_limit", "None or an int >= 1")
        if not _is_int(self.workers) or self.workers < 1:
            raise bad("workers", "an int >= 1")
        if isinstance(self.cpus_per_trial, bool) or not isinstance(self.cpus_per_trial, (int, float)) \
                or not self.cpus_per_trial > 0:
            raise bad("cpus_per_trial", "a number > 0 (fractions share a CPU)")
        if not _is_int(self.max_failures) or self.max_failures < 0:
            raise bad("max_failures", "an int >= 0")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address):
            raise bad("ray_address", "None or an address such as 'auto' or '10.0.0.5:6379'")
        if (self.workers > 1 or self.asha) and not self.uses_ray:
            name = "workers" if self.workers > 1 else "asha"
            raise bad(name, "its default unless the search runs on Ray (ray=True or a ray_address)")

    @property
    def uses_ray(self) -> bool:
        return self.ray or self.ray_address is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train"] = asdict(self.train)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise OptionError(f"unknown SearchConfig field(s) {unknown}; allowed: {sorted(names)}")
        values = dict(data)
        if isinstance(values.get("train"), dict):
            train_names = {item.name for item in fields(TrainConfig)}
            wrong = sorted(set(values["train"]) - train_names)
            if wrong:
                raise OptionError(f"unknown SearchConfig.train field(s) {wrong}; allowed: {sorted(train_names)}")
            values["train"] = TrainConfig(**values["train"])
        return cls(**values)

    def resumed_with(self, given: dict[str, Any]) -> SearchConfig:
        """This (stored) config with the settings a user passed on resume. Search settings must
        match what is stored; execution settings (Ray, workers) may change."""
        conflicts = []
        changes = {}
        stored = self.to_dict()
        for name, value in given.items():
            # "train.epochs" names one field of the nested train config
            head, _, sub = name.partition(".")
            if head not in stored or (sub and sub not in stored[head]):
                raise OptionError(f"unknown SearchConfig field {name!r}")
            if value is None:
                continue
            if name == "train" and isinstance(value, TrainConfig):
                value = asdict(value)
            have = stored[head][sub] if sub else stored[head]
            if name in EXECUTION_FIELDS:
                changes[name] = value
            elif value != have:
                conflicts.append(f"{name}={value!r} (the run has {have!r})")
        if conflicts:
            raise OptionError("resume: settings conflict with the run's config.json: " + "; ".join(conflicts)
                             + ". Drop them to resume as configured, or start a new run.")
        return replace(self, **changes)


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
