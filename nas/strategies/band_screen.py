"""`band-screen`: `proxy-warm` narrowed to the latency band just under the budget.

Under a hard latency budget the most accurate networks use most of it, and a short search trial
(a few epochs on a few hundred images) ranks networks that differ by a point no better than chance
(BENCHMARKS.md, search quality). So this strategy spends its first trials where the prior is
strong: it draws feasible architectures, keeps those predicted at >= 90% of the budget, ranks them
by parameter count (or any zero-cost proxy) and trains the top ones first; regularized evolution
continues from them. It is `proxy-warm` with other defaults, so options, state and resume are
that strategy's.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.strategies.base import SEARCHERS
from nas.strategies.proxy_warm import ProxyWarmOptions, ProxyWarmSearcher


@dataclass(frozen=True)
class BandScreenOptions(ProxyWarmOptions):
    pool_size: int = 300  # in-band feasible architectures scored
    band: float = 0.9


@SEARCHERS.register("band-screen")
class BandScreenSearcher(ProxyWarmSearcher):
    """Rank feasible architectures predicted at >= 90% of the budget by a cheap score, train the
    best first, then evolve."""

    name = "band-screen"

    Options = BandScreenOptions
