"""`band-screen`: `proxy-warm` narrowed to the latency band just under the budget.

Under a hard latency budget the most accurate networks use most of it, and a short search trial
(a few epochs on a few hundred images) ranks networks that differ by a point no better than chance
(BENCHMARKS.md, search quality). So this strategy spends its first trials where the prior is
strong: it draws feasible architectures, keeps 100 predicted at >= 90% of the budget, ranks them
by NASWOT on one batch of the run's images (#params where the run has none; published scores on a
tabular benchmark) and trains the top ones first; regularized evolution continues from them
(BENCHMARKS.md: on NAS-Bench-201 and on the CIFAR-10 subset against random search, with where it
falls short). It is `proxy-warm` with other defaults, so options, state and resume are that
strategy's.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from nas.strategies.base import SEARCHERS, StrategyContext
from nas.strategies.proxy_warm import ProxyWarmOptions, ProxyWarmSearcher

logger = logging.getLogger(__name__)
COMPUTED_POOL, FREE_POOL = 100, 300


@dataclass(frozen=True)
class BandScreenOptions(ProxyWarmOptions):
    # None: 100 when NASWOT is computed here (~1.4 s a network at 32 px on one CPU thread, so a
    # fraction of a search), 300 when scores are free (given by the run, or #params): drawing 1000
    # in the band took ~30 s a run on NB201 here; whether 1000 ranks better was not measured
    pool_size: int | None = None  # in-band feasible architectures scored
    band: float = 0.9
    proxy: str = "nwot"


@SEARCHERS.register("band-screen")
class BandScreenSearcher(ProxyWarmSearcher):
    """Rank feasible architectures predicted at >= 90% of the budget by a cheap score, train the
    best first, then evolve."""

    name = "band-screen"

    Options = BandScreenOptions

    def __init__(self, context: StrategyContext, options: BandScreenOptions | None = None, **settings: Any) -> None:
        options = options or BandScreenOptions(**settings)
        has_images = hasattr(getattr(context.data, "train", None), "tensors")
        if context.score is None and not has_images and options.proxy == BandScreenOptions.proxy:
            logger.info("band-screen: no training images to score NASWOT on; ranking by #params")
            options = dataclasses.replace(options, proxy="params")
        if options.pool_size is None:
            free = context.score is not None or options.proxy == "params"
            options = dataclasses.replace(options, pool_size=FREE_POOL if free else COMPUTED_POOL)
        super().__init__(context, options)
