"""Cheap signals of a network's final accuracy, and how well each ranks the networks a benchmark
trained to the end (Kendall tau-b, which handles the ties of a network trained on several seeds).

Zero-cost proxies are computed as `nas proxies` computes them: one batch of 64 training images
(seed 0), the network at its seeded initialisation; params and MACs come with them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from scipy.stats import kendalltau

__all__ = ["kendall", "signal_table"]


def signal_table(proxies: list[str], dataset: str, archs: dict[str, dict[str, Any]], resolution: int,
                 num_classes: int) -> dict[str, dict[str, Any]]:
    """{key: {proxy: score, ..., "params", "macs", "seconds": {proxy: s}}} for every architecture."""
    from nas.strategies.proxy_score import proxy_scorer
    from nas.training import load_dataset
    from predictors.cost import macs_of_spec, params_of_spec
    from search_spaces.spec import ArchSpec

    data = load_dataset(dataset, resolution, seed=0)
    scorers = {name: proxy_scorer(name, data, 0, resolution=resolution, num_classes=num_classes) for name in proxies}
    table: dict[str, dict[str, Any]] = {}
    for key, arch_dict in archs.items():
        arch = ArchSpec.from_dict(arch_dict)
        row: dict[str, Any] = {"params": params_of_spec(arch), "macs": macs_of_spec(arch), "seconds": {}}
        for name, score in scorers.items():
            started = time.perf_counter()
            value = score(arch)
            row["seconds"][name] = time.perf_counter() - started
            row[name] = value if math.isfinite(value) else None
        table[key] = row
    return table


def kendall(signal: list[float | None], target: list[float]) -> dict[str, Any]:
    """tau-b and its two-sided p-value over the pairs where the signal exists."""
    pairs = [(s, t) for s, t in zip(signal, target) if s is not None and math.isfinite(s)]
    if len(pairs) < 3 or len({s for s, _ in pairs}) < 2:
        return {"tau": None, "p": None, "n": len(pairs)}
    result = kendalltau([s for s, _ in pairs], [t for _, t in pairs])
    return {"tau": float(result.statistic), "p": float(result.pvalue), "n": len(pairs)}
