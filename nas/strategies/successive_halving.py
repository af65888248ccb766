"""`successive-halving`: multi-fidelity search (Jamieson & Talwalkar 2016; the rungs of Hyperband,
Li et al. 2018) over any ask/tell strategy.

Candidates come in brackets of `bracket_size` from an inner strategy (default `band-screen`), each
trained for the cheap `low_epochs` (`Candidate.info["epochs"]`); when a bracket's cheap results
are all in, its best 1/`eta` by the MnasNet reward are trained again for the run's full epochs.
The inner strategy is told the cheap results (where to sample next); the full trials are this
strategy's own. Full epochs: the run's training epochs, or a tabular dataset's schedule (NB201:
200); low epochs: full / eta^2, at least 1 (NB201 then answers from its 12-epoch column).

A trial is no longer a unit of cost: a cheap trial costs low/full of a full one, and the NB201
benchmark counts it so. Under a time limit (`nas search --time-limit`) wall time does the counting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from nas.strategies.base import EPOCHS, SEARCHERS, Candidate, Result, Searcher, StrategyContext
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec


@dataclass(frozen=True)
class SuccessiveHalvingOptions:
    eta: int = 3  # 1 in eta of a bracket is promoted
    bracket_size: int = 9  # cheap trials per bracket
    low_epochs: int | None = None  # None: full epochs // eta^2 (at least 1)
    inner: str = "band-screen"  # the ask/tell strategy that proposes each bracket's candidates

    def __post_init__(self) -> None:
        if self.eta < 2:
            raise OptionError(f"eta={self.eta} must be >= 2")
        if self.bracket_size < self.eta:
            raise OptionError(f"bracket_size={self.bracket_size} must be >= eta ({self.eta})")
        if self.inner == "successive-halving":
            raise OptionError("inner='successive-halving': the inner strategy must be another one")


def full_epochs(context: StrategyContext) -> int | None:
    """The run's own training length: a tabular dataset's schedule, else the trials' epochs."""
    schedule = getattr(context.data, "epochs", None)
    if isinstance(schedule, int):
        return schedule
    return getattr(context.train, "epochs", None)


@SEARCHERS.register("successive-halving")
class SuccessiveHalvingSearcher(Searcher):
    """Multi-fidelity: brackets of cheap short trainings from an inner strategy, the best 1/eta of
    each trained again for the full epochs."""

    name = "successive-halving"

    Options = SuccessiveHalvingOptions

    def __init__(self, context: StrategyContext, options: SuccessiveHalvingOptions | None = None,
                 **settings: Any) -> None:
        super().__init__(context, options, **settings)
        full = full_epochs(context)
        if full is None:
            raise OptionError("successive-halving: the run gives no training epochs nor a tabular schedule")
        self.full_epochs = int(full)
        self.low_epochs = self.options.low_epochs or max(1, self.full_epochs // self.options.eta ** 2)
        if not 1 <= self.low_epochs < self.full_epochs:
            raise OptionError(f"low_epochs={self.low_epochs} must be in [1, {self.full_epochs}) (the full epochs)")
        self.inner: Searcher = SEARCHERS.get(self.options.inner)(dataclasses.replace(context, seed=context.seed + 1))
        self.asked_low = 0  # cheap trials asked so far; trial's bracket = its position // bracket_size
        self.bracket_of: dict[int, int] = {}  # trial id of a cheap trial not yet told -> its bracket
        self.brackets: dict[int, list[tuple[float, list[int]]]] = {}  # bracket -> (cheap reward, vector) told
        self.promote: list[list[int]] = []  # vectors waiting for their full trial

    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        if self.promote:
            return self.space.decode(self.promote.pop(0)), {EPOCHS: self.full_epochs, "origin": "promoted",
                                                            "rung": 1}
        self.inner.next_trial_id = self.next_trial_id  # one numbering of trials for both
        candidate = self.inner.ask()
        self.bracket_of[self.next_trial_id] = self.asked_low // self.options.bracket_size
        self.asked_low += 1
        return candidate.arch, {**candidate.info, EPOCHS: self.low_epochs, "rung": 0}

    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        bracket = self.bracket_of.pop(candidate.trial_id, None)
        if bracket is None:  # a full trial: nothing left to decide about it
            return
        self.inner.tell(candidate, result)
        told = self.brackets.setdefault(bracket, [])
        vector = [int(v) for v in self.space.encode(candidate.arch)]
        told.append((reward if result.ok and math.isfinite(reward) else -math.inf, vector))
        if len(told) == self.options.bracket_size:
            keep = math.ceil(self.options.bracket_size / self.options.eta)
            best = sorted(told, key=lambda item: -item[0])[:keep]  # stable: ties by tell order
            self.promote += [vector for score, vector in best if score > -math.inf]
            del self.brackets[bracket]

    def state_dict(self) -> dict[str, Any]:
        brackets = {str(k): [[None if s == -math.inf else s, v] for s, v in told] for k, told in self.brackets.items()}
        return {**super().state_dict(), "asked_low": self.asked_low,
                "bracket_of": {str(k): v for k, v in self.bracket_of.items()}, "brackets": brackets,
                "promote": self.promote, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.asked_low = int(state["asked_low"])
        self.bracket_of = {int(k): int(v) for k, v in state["bracket_of"].items()}
        self.brackets = {int(k): [(-math.inf if s is None else float(s), list(v)) for s, v in told]
                         for k, told in state["brackets"].items()}
        self.promote = [list(v) for v in state["promote"]]
        self.inner.load_state_dict(state["inner"])
