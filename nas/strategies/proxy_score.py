"""A zero-cost proxy as a search's cheap score: ``proxy_scorer("synflow", data, seed)(arch)``.

`proxy-warm` ranks its candidate pool with it in a real run (tabular benchmarks pass published
scores instead). The proxy sees what the trial will train on: a fixed mini-batch drawn once from
the training split with `seed`, so every candidate is scored on the same images; a data-free
proxy (synflow, params, macs, zen) needs no dataset and gets a batch of the right shape.
Each network is built and re-initialised under a fixed seed, so a score depends only on the
architecture. A proxy that fails on a network scores -inf (ranked last), never stops the search.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from predictors.proxies import get_proxy
from predictors.proxies.scoring import sample_batch, score_model, shape_batch
from search_spaces.build import build_model
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

__all__ = ["proxy_scorer"]


def proxy_scorer(name: str, data: Any, seed: int, *, resolution: int, num_classes: int,
                 channels: int = 3) -> Callable[[ArchSpec], float]:
    """Score function of proxy `name` (a `predictors.proxies` name or alias); `data` is the run's
    `DataSplits` (None or a tabular dataset: only data-free proxies, on a shape-only batch)."""
    proxy = get_proxy(name)
    train = getattr(data, "train", None)
    if train is not None and hasattr(train, "tensors"):
        images, labels = train.tensors[:2]
        batch = sample_batch(images, labels, data.num_classes, size=min(64, len(images)), seed=seed)
    elif proxy.needs_data:
        raise OptionError(f"proxy={name!r} needs training images; this run has none (data-free proxies: "
                          "synflow, zen, params, macs)")
    else:
        batch = shape_batch(channels, resolution, num_classes)

    def score(arch: ArchSpec) -> float:
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(arch)
            value = score_model(model, [proxy.name], batch, seed=seed)[proxy.name].value
        except (RuntimeError, ValueError, ZeroDivisionError) as error:
            logger.warning("proxy %s failed on %s: %s", proxy.name, arch.content_hash(), error)
            return -math.inf
        return value if math.isfinite(value) else -math.inf

    return score
