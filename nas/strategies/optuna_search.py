"""`tpe` and `nsga2`: Optuna samplers driven through Optuna's ask-and-tell API.

Each proposal is `study.ask()` followed by `space.suggest(trial)` (one categorical per decision);
each result is `study.tell(trial, values)`. The study lives in `storage`:

- `None`: in memory. Fine for one process, but it dies with it: **resume needs a storage URL**.
- `"sqlite:///runs/x/study.db"` (any RDB URL): readable by `optuna.load_study` and
  optuna-dashboard. SQLite is unsafe with several writing processes.
- `"journal:///abs/path/journal.log"` (or `"journal://relative.log"`): an append-only
  `JournalStorage(JournalFileBackend(path))`, safe with several writers.

Values. `tpe` maximises the MnasNet reward (`SearchObjective.reward`). `nsga2` maximises accuracy
and minimises `latency_ms`, with the latency budget as an Optuna constraint (violation =
latency - budget, > 0 infeasible), so constrained domination keeps the front inside the budget.
Architectures the pre-check (`is_feasible`) rejects, and failed trials, are told the worst
values (tpe: reward 0; nsga2: accuracy 0, the measured latency or `FAILED_LATENCY_FACTOR` x
budget, violation > 0) rather than `TrialState.FAIL`: both samplers ignore FAIL trials, so a
sampler told FAIL learns nothing and keeps proposing the same region; a poor COMPLETE value
puts the region on the "bad" side of TPE's density split and last in NSGA-II's ranking.
A pre-check rejection costs no training: the searcher tells it at once and asks again. So does a
suggestion of a network already evaluated (TPE and NSGA-II both re-suggest known points): it is
told the values that network got before, so the sampler gets the information and no trial is
spent retraining it. Failed results are not reused (a failure may be transient). After
`max_rejections` (16) such answers in one `ask` it enqueues a random feasible, unasked
architecture: every answer is a trial in the study, and where the pre-check passes 1% of the
space a larger bound floods the study (and NSGA-II's per-ask cost grows with its size).

Determinism and resume. Before every `study.ask()` the sampler is replaced by a fresh
`TPESampler(seed=s)` / `NSGAIISampler(seed=s)` with `s` drawn from the searcher's RNG. Both
samplers keep no state beyond their RNG (NSGA-II keeps its generations in the storage), so a
resumed searcher (study from the storage + RNG state from `state_dict`) proposes exactly what the
original would have, which one long-lived seeded sampler could not guarantee.

On `load_state_dict`, every trial still RUNNING in the study (asked, never told: the process
died) is marked FAIL so it does not linger or skew TPE's constant liar; this assumes one searcher
drives the study (the runner, in-process or through Ray), which is how this tool uses it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import Trial, TrialState

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from nas.strategies.random_search import draw_unseen, share_of_trials
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal://"
DEFAULT_STARTUP = 10  # TPE's random trials (Optuna's default)
DEFAULT_POPULATION = 20  # NSGA-II's generation size
FAILED_LATENCY_FACTOR = 10.0  # latency told for a failed/rejected trial with no latency, x budget
CONSTRAINT_KEY = "latency_over_budget_ms"  # Trial.set_constraint key: > 0 is infeasible
REJECTED_KEY = "rejected_by_precheck"  # user attrs of trials answered without training
REPEAT_KEY = "repeat_of_known"


def open_storage(storage: str | None) -> str | BaseStorage | None:
    """Optuna storage for a URL: `journal://PATH` -> JournalStorage, anything else as is."""
    if storage is None or not storage.startswith(JOURNAL_PREFIX):
        return storage
    path = storage[len(JOURNAL_PREFIX):]
    if not path:
        raise OptionError(f"storage={storage!r}: a journal needs a file, e.g. 'journal:///runs/x/journal.log'")
    return JournalStorage(JournalFileBackend(path))


@dataclass(frozen=True)
class OptunaOptions:
    study_name: str | None = None  # None: nas-<strategy>
    max_rejections: int = 16

    def __post_init__(self) -> None:
        if self.max_rejections < 0:
            raise OptionError(f"max_rejections={self.max_rejections} must be >= 0")


@dataclass(frozen=True)
class TPEOptions(OptunaOptions):
    n_startup_trials: int | None = None  # None: see TPESearcher
    multivariate: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_startup_trials is not None and self.n_startup_trials < 0:
            raise OptionError(f"n_startup_trials={self.n_startup_trials} must be >= 0")


@dataclass(frozen=True)
class NSGA2Options(OptunaOptions):
    population_size: int | None = None  # None: see NSGA2Searcher
    constrained: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.population_size is not None and self.population_size < 2:
            raise OptionError(f"population_size={self.population_size} must be >= 2")


class OptunaSearcher(Searcher):
    """Shared ask/tell plumbing; subclasses choose the sampler and the values told."""

    directions: tuple[str, ...] = ()
    Options: type = OptunaOptions

    def __init__(self, context: StrategyContext, options: Any = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        # per-trial "Trial N finished with value ..." lines would drown the run's own log
        if optuna.logging.get_verbosity() < optuna.logging.WARNING:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = context.storage
        self.study_name = self.options.study_name or f"nas-{self.name}"
        self.study = optuna.create_study(
            storage=open_storage(self.storage), sampler=self._fresh_sampler(), study_name=self.study_name,
            directions=list(self.directions), load_if_exists=True,
        )
        self.pending: dict[int, Trial] = {}  # our trial id -> Optuna trial asked, not yet told
        # content hash -> (values, constraint) told for that network: a repeated suggestion is
        # answered from here instead of training the same network again. Rebuilt from the
        # storage, so a resumed searcher knows what the study knows.
        self.known: dict[str, tuple[list[float], float | None]] = {}
        self._learn_known()

    # -- subclass hooks ----------------------------------------------------------------------------
    def _make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _values(self, result: Result | None, reward: float) -> tuple[list[float], float | None]:
        """Values to tell and the constraint (None: unconstrained); `result` is None for a
        pre-check rejection."""
        raise NotImplementedError

    def _fresh_sampler(self) -> optuna.samplers.BaseSampler:
        return self._make_sampler(int(self.rng.integers(2**31 - 1)))

    def _tell(self, trial: Trial, values: list[float], violation: float | None) -> None:
        if violation is not None:
            trial.set_constraint(CONSTRAINT_KEY, violation)
        self.study.tell(trial, values)

    def _learn_known(self) -> None:
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if frozen.user_attrs.get("status", "ok") != "ok" or frozen.user_attrs.get(REJECTED_KEY):
                continue
            try:
                arch = self.space.decode(self.space.from_params(frozen.params))
            except ValueError:  # SpecError: a trial of another space, nothing to reuse
                continue
            self.known[arch.content_hash()] = (list(frozen.values), frozen.constraints.get(CONSTRAINT_KEY))

    # -- ask / tell --------------------------------------------------------------------------------
    def _ask(self) -> Trial:
        self.study.sampler = self._fresh_sampler()
        return self.study.ask()

    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        rejected = repeated = 0
        while True:
            trial = self._ask()
            arch = self.space.suggest(trial)
            if not self.is_feasible(arch):
                trial.set_user_attr(REJECTED_KEY, True)
                self._tell(trial, *self._values(None, 0.0))
                rejected += 1
            elif arch.content_hash() in self.known:
                trial.set_user_attr(REPEAT_KEY, True)
                self._tell(trial, *self.known[arch.content_hash()])
                repeated += 1
            else:
                break
            if rejected + repeated >= self.options.max_rejections:
                # the sampler keeps landing on rejected or known networks: make this trial a
                # random feasible, unasked one (enqueued parameters are what `suggest` returns)
                logger.info("%s: %d suggestions rejected, %d repeated; enqueuing a random feasible one",
                            self.name, rejected, repeated)
                fallback, _ = draw_unseen(self, set(self.known))
                self.study.enqueue_trial(self.space.to_params(self.space.encode(fallback)))
                trial = self._ask()
                arch = self.space.suggest(trial)
                break
        self.pending[self.next_trial_id] = trial
        return arch, {"optuna_number": trial.number, "rejected": rejected, "repeated": repeated}

    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        trial = self.pending.pop(candidate.trial_id, None)
        if trial is None:
            logger.warning("%s: trial %d is not pending (told twice, or failed on resume); result ignored",
                           self.name, candidate.trial_id)
            return
        trial.set_user_attr("status", result.status)
        values, violation = self._values(result, reward)
        self._tell(trial, values, violation)
        if result.ok:
            self.known[candidate.arch.content_hash()] = (values, violation)

    # -- resume ------------------------------------------------------------------------------------
    def fail_running_trials(self) -> list[int]:
        """Mark every RUNNING trial of the study FAIL (they were asked by a process that died)."""
        failed = []
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(frozen.number)
        if failed:
            logger.warning("%s: trials %s were asked but never told; marked FAIL", self.name, failed)
        return failed

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "study_name": self.study_name,
            "storage": self.storage,
            "pending": {str(trial_id): trial.number for trial_id, trial in self.pending.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("study_name") != self.study_name:
            raise OptionError(f"{self.name}: state is for study {state.get('study_name')!r}, "
                             f"this searcher opened {self.study_name!r}; pass study_name={state.get('study_name')!r}")
        if self.storage is None:
            logger.warning("%s: resuming with in-memory storage: the study's trials are lost, the sampler "
                           "starts from scratch; pass a storage URL (e.g. sqlite:///runs/x/study.db) to resume",
                           self.name)
        elif state.get("storage") != self.storage:
            logger.warning("%s: state was written for storage %r, continuing in %r", self.name,
                           state.get("storage"), self.storage)
        self.pending.clear()  # their Trial objects died with the old process
        self.fail_running_trials()


@SEARCHERS.register("tpe")
class TPESearcher(OptunaSearcher):
    """Tree-structured Parzen estimator maximising the MnasNet reward.

    `n_startup_trials` random trials come first: TPE's good/bad density split needs a handful of
    points per side before its densities beat uniform sampling. Default: Optuna's 10, or a fifth
    of `num_trials` when that is smaller (at least 3), so a short search is not mostly random. On
    the synthetic test objective (60 trials, 5 seeds) 5, 10 and 20 startup trials did about
    equally well (0.871, 0.860, 0.861 mean best reward), 30 worse (0.845). With
    `multivariate=True` TPE models the decisions jointly (a block's kernel, expansion and width
    only matter together); on the synthetic test objective it found better rewards than
    independent TPE (0.860 vs 0.851, mean best of 5 seeds x 60 trials)."""

    name = "tpe"
    directions = ("maximize",)

    Options = TPEOptions

    @property
    def n_startup_trials(self) -> int:
        given = self.options.n_startup_trials
        return given if given is not None else share_of_trials(self.context.trials, DEFAULT_STARTUP, 5, 3)

    def _make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                          multivariate=self.options.multivariate)

    def _values(self, result: Result | None, reward: float) -> tuple[list[float], float | None]:
        return [reward], None  # the reward already folds the budget in


@SEARCHERS.register("nsga2")
class NSGA2Searcher(OptunaSearcher):
    """NSGA-II on (accuracy up, latency_ms down) under the latency budget as a constraint.

    `population_size` defaults to 20 (Optuna's 50 would spend a 60-trial search on its random
    first generation), or a sixth of `num_trials` when that is smaller (at least 4): six
    generations at least. With 60 trials, 10 beat 20 in hypervolume on the synthetic test
    objective (1.52 vs 1.22, 10 seeds)."""

    name = "nsga2"
    directions = ("maximize", "minimize")

    Options = NSGA2Options

    @property
    def population_size(self) -> int:
        given = self.options.population_size
        return given if given is not None else share_of_trials(self.context.trials, DEFAULT_POPULATION, 6, 4)

    def _make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)

    def _values(self, result: Result | None, reward: float) -> tuple[list[float], float | None]:
        budget = self.objective.latency_budget_ms
        latency = result.latency_ms if result is not None else None
        if latency is None or not (math.isfinite(latency) and latency > 0):
            latency = FAILED_LATENCY_FACTOR * budget
        if result is None or not result.ok:
            # never better than any trained network: zero accuracy and at least a unit violation
            violation: float | None = max(1.0, latency - budget)
            return [0.0, float(latency)], violation if self.options.constrained else None
        violation = float(latency - budget)
        return [float(result.accuracy), float(latency)], violation if self.options.constrained else None
