"""`evolution`: regularized (aging) evolution, Real et al. 2019 ("Regularized Evolution for Image
Classifier Architecture Search", Algorithm 1).

- The first `population_size` (P) proposals are feasible random architectures.
- After that, each proposal is a tournament: draw `sample_size` (S) distinct members of the
  population, take the one with the highest reward, and mutate it (`space.mutate`, one decision
  changed), retrying a bounded number of times until the child passes the feasibility pre-check
  and was not asked before.
- Each told result joins the population as its youngest member and the oldest member leaves once
  there are more than P: age, not fitness, decides who dies, which is what regularizes the search.

Results arrive asynchronously (Ray runs several trials at once), so a proposal never assumes the
previous one was told: it uses whatever population exists when it is asked, and falls back to a
random architecture while the population is still empty.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from nas.strategies.random_search import draw_unseen, share_of_trials
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

DEFAULT_POPULATION = 20
DEFAULT_SAMPLE = 5
MIN_POPULATION = 4


@dataclass(frozen=True)
class EvolutionOptions:
    population_size: int | None = None  # P; None: 20, or a quarter of the trial budget (at least 4)
    sample_size: int = DEFAULT_SAMPLE  # S
    mutation_tries: int = 32

    def __post_init__(self) -> None:
        if self.population_size is not None and self.population_size < 2:
            raise OptionError(f"population_size={self.population_size} must be >= 2 (a tournament needs members)")
        if self.sample_size < 1:
            raise OptionError(f"sample_size={self.sample_size} must be >= 1 (S=5 in Real et al. at small scale)")
        if self.mutation_tries < 1:
            raise OptionError(f"mutation_tries={self.mutation_tries} must be >= 1")


@SEARCHERS.register("evolution")
class EvolutionSearcher(Searcher):
    """Aging evolution with tournament selection of size S from a population of P."""

    name = "evolution"

    Options = EvolutionOptions

    def __init__(self, context: StrategyContext, options: EvolutionOptions | None = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        # with 60 trials a population of 20 would leave only 40 evolution steps, with 40 trials only 20
        self.population_size = self.options.population_size or share_of_trials(
            context.trials, DEFAULT_POPULATION, 4, MIN_POPULATION)
        # a tournament larger than the population would always pick the global best: no diversity
        self.sample_size = min(self.options.sample_size, self.population_size)
        self.mutation_tries = self.options.mutation_tries
        # (trial_id, arch, reward), oldest first
        self.population: deque[tuple[int, ArchSpec, float]] = deque()
        self.seen: set[str] = set()

    # -- proposing ---------------------------------------------------------------------------------
    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        if self.next_trial_id < self.population_size or not self.population:
            arch, _ = draw_unseen(self, self.seen)
            info: dict[str, Any] = {"origin": "random"}
        else:
            parent_id, parent = self._tournament()
            arch = self._mutate(parent)
            info = {"origin": "mutation", "parent_trial_id": parent_id}
        self.seen.add(arch.content_hash())
        return arch, info

    def _tournament(self) -> tuple[int, ArchSpec]:
        size = min(self.sample_size, len(self.population))
        contestants = self.rng.choice(len(self.population), size=size, replace=False)
        # ties go to the first contestant drawn: a deterministic, unbiased rule
        best = max(contestants, key=lambda index: self.population[int(index)][2])
        trial_id, arch, _ = self.population[int(best)]
        return trial_id, arch

    def _mutate(self, parent: ArchSpec) -> ArchSpec:
        """A feasible, unasked child; else a feasible repeat; else a fresh random architecture."""
        repeat = None
        for _ in range(self.mutation_tries):
            child = self.space.mutate(parent, self.rng)
            if not self.is_feasible(child):
                continue
            if child.content_hash() not in self.seen:
                return child
            repeat = repeat or child
        if repeat is not None:
            return repeat
        logger.info("evolution: no feasible mutation of the parent in %d tries; sampling at random", self.mutation_tries)
        return draw_unseen(self, self.seen)[0]

    # -- learning ----------------------------------------------------------------------------------
    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        # failed trials join too (reward 0, they lose every tournament) so that age stays the
        # number of results told since, as in Algorithm 1
        self.population.append((candidate.trial_id, candidate.arch, float(reward)))
        while len(self.population) > self.population_size:
            self.population.popleft()

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "population_size": self.population_size,
            "sample_size": self.sample_size,
            "population": [
                {"trial_id": trial_id, "arch": arch.to_dict(), "reward": reward}
                for trial_id, arch, reward in self.population
            ],
            "seen": sorted(self.seen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("population_size", self.population_size) != self.population_size:
            logger.warning("evolution: state has population_size=%s, continuing with %s",
                           state["population_size"], self.population_size)
        self.population = deque(
            (int(member["trial_id"]), ArchSpec.from_dict(member["arch"]), float(member["reward"]))
            for member in state["population"]
        )
        self.seen = set(state.get("seen", []))
