"""Specialisation: the sub-network a trained supernet should hand a device, chosen in seconds by
evolution over an accuracy predictor under a latency budget.

After Once-for-All's evolution finder (Cai et al., ICLR 2020, Sec. 3.3 and its released code:
population 100, 500 generations on ImageNet, the best quarter kept as parents, half of the
children mutated from one parent, half crossed from two). Here:

- fitness is `AccuracyPredictor.predict_vectors`, called once per generation on all new
  children; feasibility is `latency.predict(arch) <= budget_ms` for ANY latency model
  (`predictors.latency.open_latency_model`: a `LatencyTable`, a fitted model, `hwnasbench:`),
  where an architecture the model cannot vouch for (`MissingEntriesError`) or the supernet does
  not cover (`covers`) is infeasible;
- everything happens on canonical vectors (`space.canonical`, a direct rule in every space) and a
  network is decoded once, when its latency is first asked: decoding validates a whole spec
  (about 1 ms here), which would otherwise dominate. Sampling draws one index per decision, as
  `space.sample` does; mutation is `space.mutate`'s rule on the vector (decisions and options
  tried in random order, the first change that changes the network); crossover takes each
  decision from either parent. Each network is scored once (caches keyed by canonical vector);
- the parents survive into the next generation, so the best predicted accuracy never drops: the
  answer is at least as good as the best of the first population.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas.oneshot.ofa_predictor import AccuracyPredictor
from predictors.latency.lut import MissingEntriesError
from search_spaces.errors import OptionError, UserError
from search_spaces.spec import ArchSpec

__all__ = ["BudgetError", "EvolutionSettings", "Specialization", "specialize"]

logger = logging.getLogger(__name__)

Vector = tuple[int, ...]


class BudgetError(UserError, ValueError):
    """No sub-network the search may return fits the latency budget."""


@dataclass(frozen=True)
class EvolutionSettings:
    population: int = 100  # OFA: 100
    generations: int = 50  # OFA: 500 on ImageNet; 50 already converges on our smaller spaces
    parent_ratio: float = 0.25  # OFA: 0.25
    mutation_ratio: float = 0.5  # OFA: 0.5 (the rest are crossovers)
    # draws per child (and per initial member) before giving up on a feasible one: each draw decodes
    # a network (about 1 ms), and near a tight budget most mutations land over it
    tries: int = 10

    def __post_init__(self) -> None:
        if self.population < 2:
            raise OptionError(f"evolution.population={self.population} must be >= 2")
        if self.generations < 0:
            raise OptionError(f"evolution.generations={self.generations} must be >= 0")
        for name in ("parent_ratio", "mutation_ratio"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise OptionError(f"evolution.{name}={value} must be in (0, 1]")
        if self.tries < 1:
            raise OptionError(f"evolution.tries={self.tries} must be >= 1")


@dataclass(frozen=True)
class Specialization:
    arch: ArchSpec
    vector: list[int]
    predicted_accuracy: float
    latency_ms: float  # the latency model's prediction
    budget_ms: float
    seconds: float  # wall time of the evolution alone (predictor and latency calls included)
    evaluated: int  # distinct networks scored
    initial_best: float  # best predicted accuracy of the first population
    latency_label: str = ""
    history: list[float] = field(default_factory=list)  # best predicted accuracy after each generation

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "vector": self.vector, "predicted_accuracy": self.predicted_accuracy,
                "predicted_latency_ms": self.latency_ms, "latency_budget_ms": self.budget_ms,
                "latency_model": self.latency_label, "specialize_seconds": self.seconds,
                "evaluated": self.evaluated, "initial_best": self.initial_best}


class _Scorer:
    """Latency verdicts and predicted accuracies, each computed once per canonical vector."""

    def __init__(self, predictor: AccuracyPredictor, latency: Any, budget_ms: float,
                 covers: Callable[[ArchSpec], bool] | None) -> None:
        self.space, self.predictor, self.latency = predictor.space, predictor, latency
        self.budget_ms, self.covers = budget_ms, covers
        self.latencies: dict[Vector, float] = {}
        self.archs: dict[Vector, ArchSpec] = {}
        self.accuracies: dict[Vector, float] = {}
        self.fastest = math.inf

    def latency_of(self, vector: Vector) -> float:
        if vector not in self.latencies:
            arch = self.archs[vector] = self.space.decode(vector)
            try:
                value = float(self.latency.predict(arch))
            except MissingEntriesError:
                value = math.inf
            self.fastest = min(self.fastest, value)
            # asked only within the budget: `covers` re-reads the whole spec, as costly as decoding it
            if value <= self.budget_ms and self.covers is not None and not self.covers(arch):
                value = math.inf
            self.latencies[vector] = value
        return self.latencies[vector]

    def feasible(self, vector: Vector) -> bool:
        return self.latency_of(vector) <= self.budget_ms

    def score(self, vectors: list[Vector]) -> None:
        new = [v for v in dict.fromkeys(vectors) if v not in self.accuracies]
        if new:
            for vector, value in zip(new, self.predictor.predict_vectors(new)):
                self.accuracies[vector] = float(value)


def specialize(predictor: AccuracyPredictor, latency: Any, budget_ms: float,
               settings: EvolutionSettings | None = None, *, seed: int = 0,
               covers: Callable[[ArchSpec], bool] | None = None,
               smallest: ArchSpec | None = None) -> Specialization:
    """The network with the highest predicted accuracy found whose predicted latency is within
    `budget_ms`. `smallest` (the supernet's fastest network), when given, is checked first so a
    budget below it fails at once; otherwise a budget no sampled network meets fails after the
    first population's draws. Both raise `BudgetError` naming the budget."""
    settings = settings or EvolutionSettings()
    if not (budget_ms > 0 and math.isfinite(budget_ms)):
        raise OptionError(f"latency_budget={budget_ms!r} must be a finite number of ms > 0")
    started = time.perf_counter()
    space, rng = predictor.space, np.random.default_rng(seed)
    scorer = _Scorer(predictor, latency, budget_ms, covers)
    label = str(getattr(latency, "label", type(latency).__name__))

    def canonical(vector: Any) -> Vector:
        return tuple(int(v) for v in space.canonical(vector))

    def sample() -> Vector:
        return canonical([int(rng.integers(n)) for n in space.cardinalities])

    def mutate(vector: Vector) -> Vector:
        for position in rng.permutation(positions):
            for option in rng.permutation([o for o in range(cardinalities[position]) if o != vector[position]]):
                child = canonical(vector[:position] + (int(option),) + vector[position + 1:])
                if child != vector:
                    return child
        return vector  # a space of one network

    cardinalities = space.cardinalities
    positions = [i for i, n in enumerate(cardinalities) if n > 1]

    if smallest is not None:
        floor = scorer.latency_of(canonical(space.encode(smallest)))
        if floor > budget_ms:
            raise BudgetError(f"latency_budget={budget_ms:g} ms is below the smallest sub-network's predicted "
                              f"latency {floor:.4g} ms ({label}); allowed: >= {floor:.4g} ms")

    population: list[Vector] = [] if smallest is None else [canonical(space.encode(smallest))]
    draws = settings.population * settings.tries
    for _ in range(draws):
        if len(population) >= settings.population:
            break
        vector = sample()
        if vector not in population and scorer.feasible(vector):
            population.append(vector)
    if not population:
        fastest = (f"the fastest predicted {scorer.fastest:.4g} ms ({label}); allowed: a budget above that"
                   if math.isfinite(scorer.fastest) else f"{label} has a latency for none of them")
        raise BudgetError(f"latency_budget={budget_ms:g} ms: none of {draws} sampled sub-networks fits; {fastest}")
    if len(population) < settings.population:
        logger.info("specialize: %d of %d initial members fit %g ms", len(population), settings.population, budget_ms)
    scorer.score(population)
    initial_best = max(scorer.accuracies[v] for v in population)
    history = []

    def mutant(parents: list[Vector]) -> Vector | None:
        for _ in range(settings.tries):
            parent = parents[int(rng.integers(len(parents)))]
            child = mutate(parent)
            if scorer.feasible(child):
                return child
        return None

    def crossover(parents: list[Vector]) -> Vector | None:
        for _ in range(settings.tries):
            first, second = (parents[int(i)] for i in rng.choice(len(parents), size=2, replace=len(parents) < 2))
            mixed = [a if pick else b for a, b, pick in zip(first, second, rng.integers(0, 2, len(first)))]
            child = canonical(mixed)
            if scorer.feasible(child):
                return child
        return None

    for _ in range(settings.generations):
        ranked = sorted(population, key=lambda v: -scorer.accuracies[v])
        parents = ranked[:max(2, int(round(settings.parent_ratio * settings.population)))]
        children: list[Vector] = []
        mutations = int(round(settings.mutation_ratio * (settings.population - len(parents))))
        for index in range(settings.population - len(parents)):
            child = mutant(parents) if index < mutations else crossover(parents)
            if child is not None:
                children.append(child)
        scorer.score(children)
        population = list(dict.fromkeys(parents + children))
        history.append(max(scorer.accuracies[v] for v in population))

    best = max(population, key=lambda v: scorer.accuracies[v])
    return Specialization(arch=scorer.archs[best], vector=list(best), predicted_accuracy=scorer.accuracies[best],
                          latency_ms=scorer.latencies[best], budget_ms=budget_ms,
                          seconds=time.perf_counter() - started, evaluated=len(scorer.accuracies),
                          initial_best=initial_best, latency_label=label, history=history)
