"""`random`: uniform random search over the feasible part of the space, without repeats.

The baseline every other strategy must beat (and, as Li & Talwalkar 2019 showed, often a hard one).
Each proposal is a feasible random architecture (`Searcher.sample_feasible`) whose content hash
was never asked before, so no trial is spent training the same network twice. When the space runs
dry (small spaces, or a tight feasibility pre-check) it degrades instead of failing: it enumerates
a small space for an unasked feasible architecture, then repeats a feasible one with a warning.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

# Spaces with at most this many decision vectors are enumerated once random draws stop finding
# unasked architectures; beyond it enumeration costs more than the repeat it avoids.
ENUMERATE_LIMIT = 4096


def share_of_trials(trials: int | None, default: int, divisor: int, floor: int) -> int:
    """`default`, or `trials // divisor` when that is smaller (at least `floor`): a short search must
    not spend most of its trial budget before the strategy starts to learn."""
    return default if trials is None else max(floor, min(default, trials // divisor))


def draw_unseen(searcher: Searcher, seen: set[str], rounds: int = 64) -> tuple[ArchSpec, bool]:
    """A feasible random architecture whose hash is not in `seen`, and whether it is unseen.

    Uses only `searcher.rng`, so the draw is reproducible from the searcher's state. After
    `rounds` random draws it enumerates small spaces (in an order shuffled by the same RNG).
    When every feasible architecture was asked it returns a feasible repeat (False): a second
    trial of a network the pre-check accepts is worth more than one it rejects."""
    arch = None
    for _ in range(rounds):
        arch = searcher.sample_feasible()
        if arch.content_hash() not in seen:
            return arch, True
    if searcher.space.num_vectors() <= ENUMERATE_LIMIT:
        vectors = list(itertools.product(*(range(n) for n in searcher.space.cardinalities)))
        for index in searcher.rng.permutation(len(vectors)):
            candidate = searcher.space.decode(vectors[int(index)])
            if candidate.content_hash() not in seen and searcher.is_feasible(candidate):
                return candidate, True
    logger.warning("%s: every feasible architecture seems to have been asked (%d draws%s); repeating one",
                   searcher.name, rounds, ", space enumerated" if searcher.space.num_vectors() <= ENUMERATE_LIMIT else "")
    return (arch if arch is not None else searcher.sample_feasible()), False


@SEARCHERS.register("random")
class RandomSearcher(Searcher):
    """Uniform sampling of feasible, never-asked architectures."""

    name = "random"

    def __init__(self, context: StrategyContext, options: Any = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        self.seen: set[str] = set()

    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        arch, _ = draw_unseen(self, self.seen)
        self.seen.add(arch.content_hash())
        return arch, None

    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        pass  # random search learns nothing

    def state_dict(self) -> dict[str, Any]:
        # sorted: the set's iteration order is not part of the state, and files diff cleanly
        return {**super().state_dict(), "seen": sorted(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = set(state.get("seen", []))
