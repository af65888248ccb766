"""The ask/tell interface every search strategy implements, and the data that flows through it.

A `Searcher` proposes `Candidate`s (an architecture with a trial id) and learns from `Result`s.
It never trains, times or schedules anything itself: the in-process loop and the Ray Tune adapter
(`nas/search/runner.py`, `nas/search/ray_runner.py`) drive the same object, so a strategy does not know where its
trials ran. `state_dict()` is plain JSON, written after every `tell`, so a killed run resumes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from nas.strategies.objective import HARD_ALPHA, HARD_BETA, SOFT_EXPONENT, mnas_reward, mnas_weight
from search_spaces.errors import OptionError
from search_spaces.registry import Registry
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

STATUSES = ("ok", "failed", "infeasible")


# `Candidate.info` key: a directory of model files (arch.json + weights.safetensors) the trial starts
# from instead of a fresh initialisation -- a one-shot strategy's inherited weights (once-for-all)
INITIAL_WEIGHTS = "initial_weights"
# `Candidate.info` key: train this candidate for this many epochs instead of the run's (a tabular
# dataset answers from its longest recorded schedule within it) -- the cheap rung of multi-fidelity
EPOCHS = "epochs"


@dataclass(frozen=True)
class Candidate:
    trial_id: int
    arch: ArchSpec
    policy: dict[str, Any] | None = None  # a compression policy, when the search is over policies too
    info: dict[str, Any] = field(default_factory=dict)  # strategy bookkeeping (e.g. Optuna's trial number)

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "arch": self.arch.to_dict(), "policy": self.policy, "info": self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(int(data["trial_id"]), ArchSpec.from_dict(data["arch"]), data.get("policy"), data.get("info") or {})


@dataclass(frozen=True)
class Result:
    """What one trial found. A failed or infeasible trial is a result with a reason, not a crash."""

    status: str = "ok"
    accuracy: float | None = None  # validation top-1 in [0, 1]
    latency_ms: float | None = None  # predicted from the latency table
    measured_latency_ms: float | None = None
    macs: int | None = None
    params: int | None = None
    train_time_s: float | None = None
    epochs: int | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Result.status={self.status!r} not in {{{', '.join(STATUSES)}}}")

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.accuracy is not None and math.isfinite(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class SearchObjective:
    """What "better" means: accuracy under a latency budget, folded into MnasNet's reward.

    `constraint="hard"`: w = 0 within the budget and -1 over it; `"soft"`: w = -0.07 on both sides
    (Tan et al. 2019, eq. 2). Failed trials score 0 (the worst possible reward)."""

    latency_budget_ms: float
    constraint: str = "hard"

    def __post_init__(self) -> None:
        if not (self.latency_budget_ms > 0 and math.isfinite(self.latency_budget_ms)):
            raise ValueError(f"latency_budget_ms={self.latency_budget_ms!r} must be a finite number > 0")
        if self.constraint not in ("hard", "soft"):
            raise ValueError(f"constraint={self.constraint!r} not in {{hard, soft}}")

    def reward(self, result: Result) -> float:
        if not result.ok or result.latency_ms is None or result.latency_ms <= 0:
            return 0.0
        if self.constraint == "hard":
            w = mnas_weight(result.latency_ms, self.latency_budget_ms, HARD_ALPHA, HARD_BETA)
        else:
            w = SOFT_EXPONENT
        return mnas_reward(result.accuracy, result.latency_ms, self.latency_budget_ms, w)

    def feasible(self, result: Result) -> bool:
        return result.ok and result.latency_ms is not None and result.latency_ms <= self.latency_budget_ms


ASK_TELL = "ask-tell"
ONE_SHOT = "one-shot"
KINDS = (ASK_TELL, ONE_SHOT)


@dataclass(frozen=True)
class StrategyContext:
    """Everything a strategy receives from the run, in one typed object.

    Ask/tell strategies need the first five; `storage` is where a strategy may keep a database
    (Optuna), `work_dir` where it may keep its own files (checkpoints). A one-shot strategy also
    trains, so it gets the latency table, the data and the training settings.

    `score` is a cheap, training-free score of an architecture (a zero-cost proxy such as synflow
    or nwot computed on one mini-batch), higher = better, deterministic for a given architecture.
    It costs no trial but is not free: strategies that use it (`proxy-warm`) call it on many
    candidates and report the seconds spent. None: such strategies fall back to the parameter
    count (`predictors.cost.params_of_spec`), a published strong baseline proxy (Spearman 0.80
    with CIFAR-10 accuracy on NAS-Bench-201, as good as the best data-dependent proxies)."""

    space: SearchSpace
    objective: SearchObjective
    seed: int = 0
    is_feasible: Callable[[ArchSpec], bool] | None = None
    trials: int | None = None  # the trial budget, when the run has one
    storage: str | None = None
    work_dir: Path | None = None
    table: Any = None  # predictors.latency.LatencyTable
    data: Any = None  # nas.training.data.DataSplits
    train: Any = None  # nas.training.train.TrainConfig
    progress: bool = False
    score: Callable[[ArchSpec], float] | None = None  # cheap training-free score, higher = better


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options of its own."""


class Searcher(ABC):
    """Base of every strategy. Subclasses implement `_propose` (an architecture, and optional
    info) and `_observe`; trial ids, the RNG and the record of what was asked live here.

    `kind` is ``ask-tell`` (propose, learn from trained trials) or ``one-shot`` (`prepare` trains a
    supernet, then the single derived network is the answer: it is trained and kept in best/
    even when its predicted latency ends above the budget). `Options` is the dataclass of the
    strategy's own settings (`--strategy-options`)."""

    name: str = ""
    kind: str = ASK_TELL
    Options: type = NoOptions
    set_by_search: tuple[str, ...] = ()  # fields of Options the run fills in, not the user
    unused_settings: tuple[str, ...] = ()  # SearchConfig settings it has no use for: set, they are refused

    def __init__(self, context: StrategyContext, options: Any = None, **settings: Any) -> None:
        self.context = context
        self.options = options if options is not None else self.Options(**settings)
        self.space = context.space
        self.objective = context.objective
        self.seed = context.seed
        self.rng = np.random.default_rng(context.seed)
        # A cheap pre-check (usually the latency table): strategies use it to avoid proposing
        # architectures that cannot meet the budget, so no trial is spent training them.
        self.is_feasible = context.is_feasible or (lambda arch: True)
        self.next_trial_id = 0

    @classmethod
    def parse_options(cls, context: StrategyContext, options: dict[str, Any]) -> Any:
        """`options` (a JSON object, e.g. `--strategy-options`) as the strategy's typed Options,
        checked by name and value; no side effects, so a run can check them before it starts."""
        allowed = {item.name: item.default for item in fields(cls.Options)}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise OptionError(f"strategy_options {unknown} unknown to {cls.name!r}; allowed: "
                              + (", ".join(f"{k} (default {v!r})" for k, v in allowed.items()) or "none"))
        return cls.Options(**options)

    @classmethod
    def from_options(cls, context: StrategyContext, options: dict[str, Any]) -> Searcher:
        return cls(context, cls.parse_options(context, options))

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, kind, summary and options with their defaults (`nas strategies`)."""
        options = {item.name: None if item.default is MISSING else item.default
                   for item in fields(cls.Options) if item.name not in cls.set_by_search}
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        return {"name": cls.name, "kind": cls.kind, "summary": summary, "options": options}

    def prepare(self) -> None:
        """Work before the first ask (a one-shot strategy trains its supernet here); resumable."""

    def ask(self) -> Candidate:
        arch, info = self._propose()
        candidate = Candidate(self.next_trial_id, arch, info=info or {})
        self.next_trial_id += 1
        return candidate

    def tell(self, candidate: Candidate, result: Result) -> None:
        self._observe(candidate, result, self.objective.reward(result))

    @abstractmethod
    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]: ...

    @abstractmethod
    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None: ...

    def sample_feasible(self, tries: int = 200) -> ArchSpec:
        """A random architecture that passes the pre-check (the last draw if none does)."""
        for _ in range(tries):
            arch = self.space.sample(self.rng)
            if self.is_feasible(arch):
                return arch
        return arch

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "next_trial_id": self.next_trial_id,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"searcher state is for {state.get('name')!r}, not {self.name!r}")
        self.seed = state["seed"]
        self.next_trial_id = state["next_trial_id"]
        self.rng.bit_generator.state = state["rng"]


SEARCHERS: Registry[type[Searcher]] = Registry("search strategy")
