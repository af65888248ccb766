"""`local`: local search around the incumbent (White, Nolen, Ravi and Savani 2021, "Exploring the
Loss Landscape in Neural Architecture Search", UAI; NASLib's `LocalSearch`).

The search walks in steps:

- **start**: `num_init` feasible random architectures (`restart_size` after a restart); when all
  are told, the best becomes the incumbent.
- **neighbours**: every one-decision change of the incumbent (its *neighbourhood*: each decision
  set to each other option, networks that decode equal counted once), in random order, or a
  random subset of `neighbours` of them. Neighbours asked before cost nothing: their told reward
  counts, they are not asked again. Infeasible ones (the pre-check) are skipped. When all are
  told, the search moves to the best neighbour if it is strictly better than the incumbent
  ("best improvement"), and otherwise the incumbent is a local optimum: a restart begins.

No architecture is asked twice (until the space runs dry, see `random_search.draw_unseen`).
Results arrive asynchronously (Ray runs several trials at once): while a step waits for results
and has nothing left to ask, a proposal is a feasible random architecture (origin ``waiting``)
that joins the current step, so it counts if it beats the incumbent.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from nas.strategies.random_search import draw_unseen, share_of_trials
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

DEFAULT_INIT = 10  # NASLib's default


@dataclass(frozen=True)
class LocalOptions:
    num_init: int | None = None  # random architectures first; None: 10, or a quarter of the trial budget (at least 1)
    neighbours: int | None = None  # unasked neighbours evaluated per step; None: all of them
    restart_size: int = 1  # random architectures a restart draws (the best is the new incumbent)

    def __post_init__(self) -> None:
        if self.num_init is not None and self.num_init < 1:
            raise OptionError(f"num_init={self.num_init} must be >= 1 (the search starts from a told architecture)")
        if self.neighbours is not None and self.neighbours < 1:
            raise OptionError(f"neighbours={self.neighbours} must be >= 1, or null for the whole neighbourhood")
        if self.restart_size < 1:
            raise OptionError(f"restart_size={self.restart_size} must be >= 1")


START, NEIGHBOURS = "start", "neighbours"


@SEARCHERS.register("local")
class LocalSearcher(Searcher):
    """Local search: evaluate the incumbent's one-mutation neighbours, move to the best when it is
    better, restart from random architectures at a local optimum."""

    name = "local"

    Options = LocalOptions

    def __init__(self, context: StrategyContext, options: LocalOptions | None = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        self.num_init = self.options.num_init or share_of_trials(context.trials, DEFAULT_INIT, 4, 1)
        self.seen: set[str] = set()
        self.rewards: dict[str, float] = {}  # content hash -> reward, every told trial
        # the incumbent: {"hash", "vector", "reward", "trial_id"}; None before the first start step ends
        self.center: dict[str, Any] | None = None
        # the step in progress: its kind, random draws still to ask, neighbours still to ask
        # (canonical vectors) and its members [hash, vector, trial_id or None when asked earlier]
        self.step: dict[str, Any] = self._start_step(self.num_init)
        self.moves = 0
        self.restarts = 0

    @staticmethod
    def _start_step(random_left: int) -> dict[str, Any]:
        return {"kind": START, "random_left": random_left, "todo": [], "members": []}

    def start_from(self, members: list[tuple[str, list[int], int]]) -> None:
        """Make the first step these (hash, vector, trial id) architectures, asked by someone
        else (`proxy-warm`'s top-scored candidates) and told to this searcher later, instead of
        `num_init` random ones."""
        self.step = {"kind": START, "random_left": 0, "todo": [],
                     "members": [[h, [int(v) for v in vector], trial_id] for h, vector, trial_id in members]}
        self.seen.update(h for h, _, _ in members)

    # -- proposing ---------------------------------------------------------------------------------
    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        self._advance()
        step = self.step
        while step["todo"]:  # a neighbour may have been asked since the step began (a waiting draw)
            vector = step["todo"].pop(0)
            arch = self.space.decode(vector)
            key = arch.content_hash()
            if key not in self.seen:
                return self._take(arch, key, {"origin": "neighbour", "center_trial_id": self.center["trial_id"]})
        if step["random_left"] > 0:
            step["random_left"] -= 1
            origin = "random" if self.center is None and not self.restarts else "restart"
        else:
            origin = "waiting"  # the step waits for results: explore meanwhile
        arch, _ = draw_unseen(self, self.seen)
        return self._take(arch, arch.content_hash(), {"origin": origin})

    def _take(self, arch: ArchSpec, key: str, info: dict[str, Any]) -> tuple[ArchSpec, dict[str, Any]]:
        self.seen.add(key)
        self.step["members"].append([key, [int(v) for v in self.space.encode(arch)], self.next_trial_id])
        return arch, info

    # -- learning ----------------------------------------------------------------------------------
    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        key = candidate.arch.content_hash()
        self.rewards[key] = max(float(reward), self.rewards.get(key, float("-inf")))
        self._advance()

    # -- the walk ----------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Close every step whose members are all told: pick the incumbent, move or restart.
        Ends: each pass either moves to a strictly better incumbent or starts a step that has
        random draws left to ask."""
        while self._step_done():
            members = [(self.rewards[h], h, vector, trial_id) for h, vector, trial_id in self.step["members"]]
            best = max(members, key=lambda member: member[0]) if members else None  # ties: the first
            if self.step["kind"] == START:
                if best is None:  # nothing to start from (cannot happen with random_left >= 1)
                    self.step = self._start_step(self.options.restart_size)
                    continue
                self._move_to(best)
            elif best is not None and best[0] > self.center["reward"]:
                self.moves += 1
                self._move_to(best)
            else:
                logger.debug("local: trial %s is a local optimum (reward %.4f); restarting",
                             self.center["trial_id"], self.center["reward"])
                self.restarts += 1
                self.center = None
                self.step = self._start_step(self.options.restart_size)

    def _step_done(self) -> bool:
        step = self.step
        return (step["random_left"] == 0 and not step["todo"]
                and all(h in self.rewards for h, _, _ in step["members"]))

    def _move_to(self, member: tuple[float, str, list[int], int | None]) -> None:
        reward, key, vector, trial_id = member
        self.center = {"hash": key, "vector": vector, "reward": reward, "trial_id": trial_id}
        self.step = self._neighbour_step(vector, key)

    def _neighbour_step(self, vector: list[int], center_key: str) -> dict[str, Any]:
        """The incumbent's neighbourhood: told ones are members at once, unasked feasible ones
        are to ask (shuffled; the first `neighbours` of them when set). Neighbours asked but not
        yet told are left out, so a lost trial cannot stall the walk."""
        known, fresh = [], []
        found = {center_key}
        for position, count in enumerate(self.space.cardinalities):
            for option in range(count):
                if option == vector[position]:
                    continue
                arch = self.space.decode([*vector[:position], option, *vector[position + 1:]])
                key = arch.content_hash()
                if key in found:
                    continue
                found.add(key)
                canonical = [int(v) for v in self.space.encode(arch)]
                if key in self.rewards:
                    known.append([key, canonical, None])
                elif key not in self.seen and self.is_feasible(arch):
                    fresh.append(canonical)
        order = self.rng.permutation(len(fresh))
        todo = [fresh[int(index)] for index in order]
        if self.options.neighbours is not None:
            todo = todo[: self.options.neighbours]
        return {"kind": NEIGHBOURS, "random_left": 0, "todo": todo, "members": known}

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "num_init": self.num_init,
            "seen": sorted(self.seen),
            "rewards": dict(sorted(self.rewards.items())),
            "center": copy.deepcopy(self.center),
            "step": copy.deepcopy(self.step),
            "moves": self.moves,
            "restarts": self.restarts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.num_init = int(state["num_init"])
        self.seen = set(state["seen"])
        self.rewards = {key: float(value) for key, value in state["rewards"].items()}
        self.center = state["center"]
        self.step = state["step"]
        self.moves = int(state["moves"])
        self.restarts = int(state["restarts"])
