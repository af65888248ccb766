"""`SearchSpace`: a factorized list of decisions, each with a few options, and a decoder from one
index per decision to an `ArchSpec`.

Everything a searcher needs follows from that pair: sampling picks random indices, mutation
changes one, the vector encoding *is* the indices, Optuna suggests one categorical per decision,
and the RL controller emits one token per decision. Concrete spaces (`spaces/`) define the
decisions, the decoder and `candidate_ops()`; they register by name in `SPACES`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces.build import LayerShape, layer_shapes
from search_spaces.registry import Registry
from search_spaces.spec import ArchSpec, SpecError


@dataclass(frozen=True, slots=True)
class Decision:
    """One factorized choice, e.g. `stage3.kernel` with options (3, 5, 7)."""

    name: str
    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise SpecError(f"decision {self.name!r} has no options")


class SearchSpace(ABC):
    """Base class of every space. Subclasses set `name`, build `decisions` in `__init__` and
    implement `decode` and `candidate_ops`; `encode` must invert `decode`."""

    name: str = ""

    def __init__(self, resolution: int, num_classes: int) -> None:
        self.resolution = resolution
        self.num_classes = num_classes
        self.decisions: list[Decision] = []

    # -- to implement ------------------------------------------------------------------------------
    @abstractmethod
    def decode(self, vector: Sequence[int]) -> ArchSpec:
        """Indices (one per decision) -> architecture."""

    @abstractmethod
    def encode(self, arch: ArchSpec) -> np.ndarray:
        """Architecture -> indices; raises `SpecError` when the architecture is not in the space."""

    @abstractmethod
    def candidate_ops(self) -> list[LayerShape]:
        """Every distinct (part, input shape) any architecture of the space can contain, stem and
        head included: exactly what a latency table must measure."""

    # -- derived -----------------------------------------------------------------------------------
    @property
    def cardinalities(self) -> list[int]:
        return [len(decision.options) for decision in self.decisions]

    def check_vector(self, vector: Sequence[int]) -> list[int]:
        if len(vector) != len(self.decisions):
            raise SpecError(f"{self.name}: vector has {len(vector)} entries, expected {len(self.decisions)}")
        out = []
        for index, (value, decision) in enumerate(zip(vector, self.decisions)):
            value = int(value)
            if not 0 <= value < len(decision.options):
                raise SpecError(
                    f"{self.name}: vector[{index}] ({decision.name})={value} not in 0..{len(decision.options) - 1}"
                )
            out.append(value)
        return out

    def sample(self, rng: np.random.Generator) -> ArchSpec:
        return self.decode([int(rng.integers(n)) for n in self.cardinalities])

    def mutate(self, arch: ArchSpec, rng: np.random.Generator) -> ArchSpec:
        """Change one decision to a different option; retries until the network actually changes
        (some decisions, e.g. the kernel of a skipped layer, leave it as it was)."""
        vector = list(self.encode(arch))
        mutable = [i for i, n in enumerate(self.cardinalities) if n > 1]
        for _ in range(64):
            position = int(rng.choice(mutable))
            options = [o for o in range(self.cardinalities[position]) if o != vector[position]]
            candidate = list(vector)
            candidate[position] = int(rng.choice(options))
            child = self.decode(candidate)
            if child != arch:
                return child
        return child

    def suggest(self, trial: Any) -> ArchSpec:
        """Ask an Optuna trial for one index per decision."""
        return self.decode([trial.suggest_categorical(d.name, list(range(len(d.options)))) for d in self.decisions])

    def size(self) -> int:
        """Number of decision vectors (an upper bound on distinct networks where choices of
        skipped layers do not matter)."""
        return math.prod(self.cardinalities)

    def log10_size(self) -> float:
        return sum(math.log10(n) for n in self.cardinalities)

    def layer_signatures(self, arch: ArchSpec) -> list[str]:
        return [layer.signature for layer in layer_shapes(arch)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "decisions": len(self.decisions),
            "log10_size": round(self.log10_size(), 2),
        }


SPACES: Registry[type[SearchSpace]] = Registry("search space")


def get_space(name: str, resolution: int = 224, num_classes: int = 1000, **options: Any) -> SearchSpace:
    return SPACES.get(name)(resolution=resolution, num_classes=num_classes, **options)
