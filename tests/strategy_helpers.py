"""Helpers for the search-strategy tests: a synthetic 4^10 space, a cheap deterministic
objective over it (and over the tiny space), and an ask/tell loop.

The synthetic objective is built so that searching pays: each decision's options trade accuracy
for latency (slower options tend to be more accurate, with scatter), neighbouring decisions
interact a little, and the latency budget sits near the median latency, so the best reward
needs a good combination of many decisions, not one lucky draw.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nas.strategies.base import Result, Searcher, SearchObjective
from search_spaces.build import LayerShape, layer_shapes
from search_spaces.space import Decision, SearchSpace
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec

KERNEL_EXPAND = ((3, 1.0), (3, 6.0), (5, 3.0), (7, 6.0))
WIDTHS = (8, 12, 16, 24)
STRIDES = (2, 1, 2, 1, 1)


class SyntheticSpace(SearchSpace):
    """Five mbconv blocks, each with a (kernel, expansion) and a width decision: 4^10 networks,
    every vector a distinct architecture (so encode(decode(v)) == v)."""

    name = "synthetic"

    def __init__(self, resolution: int = 16, num_classes: int = 4) -> None:
        super().__init__(resolution, num_classes)
        for index in range(len(STRIDES)):
            self.decisions.append(Decision(f"b{index}.kernel_expand", KERNEL_EXPAND))
            self.decisions.append(Decision(f"b{index}.width", WIDTHS))

    def decode(self, vector: Sequence[int]) -> ArchSpec:
        values = self.check_vector(vector)
        blocks = []
        for index, stride in enumerate(STRIDES):
            kernel, expand = KERNEL_EXPAND[values[2 * index]]
            blocks.append(BlockSpec(Op.MBCONV, WIDTHS[values[2 * index + 1]], stride=stride, kernel=kernel,
                                    expand_ratio=expand))
        return ArchSpec(StemSpec(8), tuple(blocks), HeadSpec(conv_channels=32, dropout=0.0),
                        resolution=self.resolution, num_classes=self.num_classes)

    def encode(self, arch: ArchSpec) -> np.ndarray:
        if len(arch.blocks) != len(STRIDES):
            raise SpecError(f"synthetic space: {len(arch.blocks)} blocks, expected {len(STRIDES)}")
        out = []
        for index, block in enumerate(arch.blocks):
            try:
                out += [KERNEL_EXPAND.index((block.kernel, block.expand_ratio)), WIDTHS.index(block.out_channels)]
            except ValueError:
                raise SpecError(f"synthetic space: blocks[{index}] is not in the space") from None
        return np.array(out)

    def candidate_ops(self) -> list[LayerShape]:  # not needed by searchers; a sample suffices here
        seen: dict[str, LayerShape] = {}
        for vector in itertools.islice(itertools.product(range(4), repeat=10), 64):
            for layer in layer_shapes(self.decode(vector)):
                seen.setdefault(layer.signature, layer)
        return list(seen.values())


class TableObjective:
    """accuracy and latency_ms as fixed functions of an architecture's decision vector.

    latency = 1 + sum of per-(decision, option) costs; accuracy = 0.3 + sum of per-option gains
    (roughly proportional to the cost, with scatter) + small interactions of neighbouring
    decisions, clipped to [0, 1]."""

    def __init__(self, space: SearchSpace, seed: int = 1234, budget_quantile: float = 0.5) -> None:
        rng = np.random.default_rng(seed)
        self.space = space
        cards = space.cardinalities
        self.latency = [rng.uniform(0.1, 1.0, n) for n in cards]
        self.gain = [0.04 * lat / np.mean(lat) * rng.uniform(0.5, 1.5, len(lat)) for lat in self.latency]
        self.pair = [rng.normal(0.0, 0.01, (a, b)) for a, b in itertools.pairwise(cards)]
        latencies = [self.evaluate_vector(space.check_vector([int(rng.integers(n)) for n in cards]))[1]
                     for _ in range(2000)]
        self.budget_ms = float(np.quantile(latencies, budget_quantile))
        self.objective = SearchObjective(self.budget_ms)

    def evaluate_vector(self, vector: Sequence[int]) -> tuple[float, float]:
        latency = 1.0 + sum(table[v] for table, v in zip(self.latency, vector))
        accuracy = 0.3 + sum(table[v] for table, v in zip(self.gain, vector))
        accuracy += sum(table[a, b] for table, a, b in zip(self.pair, vector, vector[1:]))
        return float(np.clip(accuracy, 0.0, 1.0)), float(latency)

    def __call__(self, arch: ArchSpec) -> Result:
        accuracy, latency = self.evaluate_vector([int(v) for v in self.space.encode(arch)])
        return Result(status="ok", accuracy=accuracy, latency_ms=latency)

    def reward(self, arch: ArchSpec) -> float:
        return self.objective.reward(self(arch))

    def predict(self, arch: ArchSpec) -> float:
        """The latency model's interface (`LatencyModel.predict`), for strategies that read it."""
        return self(arch).latency_ms


def run_search(searcher: Searcher, evaluate: Callable[[ArchSpec], Result], trials: int,
               pending: int = 1, infos: list[dict[str, Any]] | None = None) -> list[tuple[ArchSpec, Result]]:
    """Ask/tell loop keeping up to `pending` trials in flight, told oldest first; each
    candidate's `info` is appended to `infos` when given."""
    history: list[tuple[ArchSpec, Result]] = []
    in_flight = []
    asked = 0
    while len(history) < trials:
        while asked < trials and len(in_flight) < pending:
            in_flight.append(searcher.ask())
            asked += 1
        candidate = in_flight.pop(0)
        if infos is not None:
            infos.append(candidate.info)
        result = evaluate(candidate.arch)
        searcher.tell(candidate, result)
        history.append((candidate.arch, result))
    return history


def best_reward(history: list[tuple[ArchSpec, Result]], objective: SearchObjective) -> float:
    return max(objective.reward(result) for _, result in history)
