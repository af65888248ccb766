"""`proxy-warm`: a proxy warm start, then evolution or local search (Abdelfattah et al. 2021,
"Zero-Cost Proxies for Lightweight NAS", ICLR: "warmup" of the search by zero-cost proxies).

- At the first ask, `pool_size` feasible random architectures (distinct) are scored by the
  context's `score` (a cheap, training-free score, higher = better; tabular benchmarks pass
  published proxy scores), else by the option `proxy`: the parameter count by default
  (`predictors.cost.params_of_spec`, a published strong baseline proxy), or any zero-cost proxy
  of `predictors.proxies` computed on the run's training images (`nas.strategies.proxy_score`). The seconds spent
  scoring are logged, kept in the state and in each warm candidate's info: a proxy costs no
  trial, but it is not free.
- `band` > 0 keeps only architectures whose predicted latency uses at least that share of the
  budget (the best networks under a budget use it), drawing up to 20 feasible architectures per
  pool place; when none lands in the band, the feasible ones under it are ranked (with a warning).
- The first `warm_start` proposals are the top-scored ones, best first (by default as many as
  the continuing search starts with: evolution's population, local search's `num_init`).
- Then the search continues with `then`: regularized evolution, whose population starts as
  the warm trials (so its tournaments start at once when `warm_start` is at least the
  population), or local search, whose first incumbent is the best warm trial.

The continuing searcher is an ordinary registered strategy built from the same context (seed + 1)
with its default options; every result is told to it, and its state is part of this one's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from nas.strategies.evolution import EvolutionSearcher
from nas.strategies.local_search import LocalSearcher
from nas.strategies.proxy_score import proxy_scorer
from predictors.cost import params_of_spec
from predictors.proxies import get_proxy
from predictors.latency import MissingEntriesError
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

THEN = ("evolution", "local")
BAND_DRAWS = 20  # feasible draws per pool place when a band narrows the pool


@dataclass(frozen=True)
class ProxyWarmOptions:
    pool_size: int = 1000  # feasible random architectures scored
    warm_start: int | None = None  # top-scored ones asked first; None: the continuing search's start size
    then: str = "evolution"  # the search that continues: evolution or local
    proxy: str = "params"  # the score when the run gives none: a predictors.proxies name (synflow, nwot, ...)
    band: float = 0.0  # the pool keeps only architectures predicted at >= band x the budget (0: any feasible)

    def __post_init__(self) -> None:
        get_proxy(self.proxy)  # an unknown name is an UnknownNameError listing the registered ones
        pool = self.pool_size  # None (band-screen's): sized once the run says what scoring costs
        if pool is not None and pool < 1:
            raise OptionError(f"pool_size={pool} must be >= 1")
        if self.warm_start is not None and not 1 <= self.warm_start <= (pool or self.warm_start):
            raise OptionError(f"warm_start={self.warm_start} must be in 1..pool_size ({pool})")
        if not 0.0 <= self.band < 1.0:
            raise OptionError(f"band={self.band} must be in [0, 1) (a fraction of the latency budget)")
        if self.then not in THEN:
            raise OptionError(f"then={self.then!r} not in {{{', '.join(THEN)}}}")


@SEARCHERS.register("proxy-warm")
class ProxyWarmSearcher(Searcher):
    """Evaluate the top proxy-scored of many feasible random architectures first, then continue
    with evolution or local search."""

    name = "proxy-warm"

    Options = ProxyWarmOptions

    def __init__(self, context: StrategyContext, options: ProxyWarmOptions | None = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        if context.score is not None:  # e.g. published scores of a tabular benchmark
            self.score, self.proxy = context.score, "context"
        elif self.options.proxy == "params":
            self.score, self.proxy = params_of_spec, "params"
        else:
            self.score = proxy_scorer(self.options.proxy, context.data, context.seed,
                                      resolution=self.space.resolution, num_classes=self.space.num_classes)
            self.proxy = get_proxy(self.options.proxy).name
        self.table = context.table
        if self.options.band > 0 and self.table is None:
            raise OptionError(f"band={self.options.band}: needs the run's latency model, and this run has none")
        self.inner: Searcher = SEARCHERS.get(self.options.then)(dataclasses.replace(context, seed=context.seed + 1))
        # by default as many as the continuing search would draw at random to start with
        start = self.inner.population_size if isinstance(self.inner, EvolutionSearcher) else self.inner.num_init
        self.warm_start = min(self.options.warm_start or start, self.options.pool_size)
        self.ranked = False
        self.queue: list[dict[str, Any]] = []  # warm candidates not yet asked: {"vector", "score", "rank"}
        self.scored = 0
        self.score_seconds = 0.0

    # -- the warm start ----------------------------------------------------------------------------
    def _rank(self) -> None:
        """Score `pool_size` distinct feasible random architectures; queue the best `warm_start`."""
        pool: dict[str, ArchSpec] = {}
        below: dict[str, ArchSpec] = {}  # feasible but under the band: the fallback when the band is empty
        draws = self.options.pool_size * (1 if self.options.band == 0 else BAND_DRAWS)
        for _ in range(draws):
            arch = self.sample_feasible()
            if not self.is_feasible(arch):  # `sample_feasible` returns its last draw when none passes
                continue
            kept = pool if self._in_band(arch) else below
            if len(kept) < self.options.pool_size:
                kept.setdefault(arch.content_hash(), arch)
            if len(pool) >= self.options.pool_size:
                break
        if not pool:
            logger.warning("proxy-warm: none of %d feasible random architectures is predicted at >= band=%s x the "
                           "budget; ranking %d under it instead", draws, self.options.band, len(below))
            pool = below
        started = time.perf_counter()
        scores = [self._score(arch) for arch in pool.values()]
        self.score_seconds = time.perf_counter() - started
        self.scored = len(scores)
        order = sorted(range(len(scores)), key=lambda index: -scores[index])  # stable: ties by draw order
        archs = list(pool.values())
        self.queue = [{"vector": [int(v) for v in self.space.encode(archs[index])], "score": scores[index],
                       "rank": rank} for rank, index in enumerate(order[: self.warm_start])]
        self.ranked = True
        logger.info("proxy-warm: scored %d feasible candidates by %s in %.2f s; asking the top %d first",
                    self.scored, self.proxy, self.score_seconds, len(self.queue))
        if isinstance(self.inner, LocalSearcher):  # its first incumbent: the best warm trial
            first = self.next_trial_id
            self.inner.start_from([(self.space.decode(item["vector"]).content_hash(), item["vector"], first + i)
                                   for i, item in enumerate(self.queue)])

    def _in_band(self, arch: ArchSpec) -> bool:
        if self.options.band == 0.0:
            return True
        try:
            latency = self.table.predict(arch)
        except MissingEntriesError:
            return False
        return latency >= self.options.band * self.objective.latency_budget_ms

    def _score(self, arch: ArchSpec) -> float:
        value = float(self.score(arch))
        return value if math.isfinite(value) else -math.inf  # a failed score ranks last

    # -- proposing ---------------------------------------------------------------------------------
    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        if not self.ranked:
            self._rank()
        self.inner.next_trial_id = self.next_trial_id  # one numbering of trials for both
        if self.queue:
            item = self.queue.pop(0)
            arch = self.space.decode(item["vector"])
            self.inner.seen.add(arch.content_hash())
            self.inner.next_trial_id += 1
            score = item["score"]
            return arch, {"origin": "proxy", "rank": item["rank"], "proxy": self.proxy,
                          "score": score if math.isfinite(score) else None,
                          "scored": self.scored, "score_seconds": round(self.score_seconds, 6)}
        candidate = self.inner.ask()
        return candidate.arch, {**candidate.info, "then": self.options.then}

    # -- learning ----------------------------------------------------------------------------------
    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        self.inner.tell(candidate, result)

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        queue = [{**item, "score": item["score"] if math.isfinite(item["score"]) else None} for item in self.queue]
        return {**super().state_dict(), "warm_start": self.warm_start, "ranked": self.ranked, "queue": queue,
                "proxy": self.proxy, "scored": self.scored, "score_seconds": self.score_seconds,
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.warm_start = int(state["warm_start"])
        self.ranked = bool(state["ranked"])
        self.queue = [{**item, "score": -math.inf if item["score"] is None else float(item["score"])}
                      for item in state["queue"]]
        if state["proxy"] != self.proxy:
            logger.warning("proxy-warm: the run was ranked by %s, resumed with %s (the ranking is kept)",
                           state["proxy"], self.proxy)
        self.scored = int(state["scored"])
        self.score_seconds = float(state["score_seconds"])
        self.inner.load_state_dict(state["inner"])
