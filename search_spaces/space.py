"""`SearchSpace`: a factorized list of decisions, each with a few options, and a decoder from one
index per decision to an `ArchSpec`.

Everything a searcher needs follows from that pair: sampling picks random indices, mutation
changes one, the vector encoding *is* the indices, Optuna suggests one categorical per decision,
and the RL controller emits one token per decision. Concrete spaces (`spaces/`) define the
decisions, the decoder and `candidate_ops()`; `spaces/` registers them by name in `SPACES`.

Several vectors may decode to the same network (a skipped layer's position, the expansion of a
block type that has none). Each network has one *canonical* vector: `encode(arch)` returns it,
`canonical(v)` maps any vector to it, and `size()` counts networks, not vectors.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import Any

import numpy as np

from search_spaces.build import LayerShape, layer_shapes
from search_spaces.spec import ArchSpec, SpecError
from search_spaces.supernet_plan import SupernetPlan, SupernetPlanError

# Inputs at or below this size (CIFAR-10, digits) get the small-input stride rule.
SMALL_INPUT_MAX_RESOLUTION = 64


def option_label(option: Any) -> str:
    """How an option shows in logs and reports: enum values, `0.25`, `5`, `skip` for None."""
    if option is None:
        return "skip"
    if isinstance(option, Enum):
        return str(option.value)
    if isinstance(option, float):
        return f"{option:g}"
    return str(option)


@dataclass(frozen=True, slots=True)
class Decision:
    """One factorized choice, e.g. `stage3.kernel` with options (3, 5, 7). `labels` name the
    options in logs and reports (derived from the options unless given)."""

    name: str
    options: tuple[Any, ...]
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise SpecError(f"decision {self.name!r} has no options")
        labels = tuple(self.labels) or tuple(option_label(option) for option in self.options)
        if len(labels) != len(self.options) or len(set(labels)) != len(labels):
            raise SpecError(f"decision {self.name!r}: labels {labels} must be distinct, one per option")
        object.__setattr__(self, "labels", labels)


def small_input_strides(resolution: int, stem_stride: int, stage_strides: Sequence[int]) -> tuple[int, list[int]]:
    """Strides for a space's input size. Above 64 px: as given (ImageNet, 32x down-sampling).
    At 64 px or less (CIFAR-10 32x32, digits): the stem and the first stride-2 stage keep the
    resolution, as the CIFAR variants of MobileNetV2 do, so 32 px ends in a 4x4 map (8x down)
    instead of 1x1."""
    strides = list(stage_strides)
    if resolution > SMALL_INPUT_MAX_RESOLUTION:
        return stem_stride, strides
    if 2 in strides:
        strides[strides.index(2)] = 1
    return 1, strides


def first_mismatch(path: str, actual: Any, expected: Any) -> str | None:
    """`blocks[3].kernel=5 (expected 3)` for the first field where two spec parts differ."""
    if actual == expected:
        return None
    if is_dataclass(actual) and type(actual) is type(expected):
        for item in fields(actual):
            left, right = getattr(actual, item.name), getattr(expected, item.name)
            if left != right:
                return f"{path}.{item.name}={option_label(left)} (expected {option_label(right)})"
    return f"{path}={actual!r} (expected {expected!r})"


def skips_last(vector: list[int], stages: Sequence[slice], skip: int) -> list[int]:
    """`vector` with each stage's skipped non-first layers moved to the stage's end, the order of
    the others kept: one canonical vector per network where a skip only removes a layer."""
    for part in stages:
        present = [index for index in vector[part][1:] if index != skip]
        vector[part] = [vector[part][0], *present, *[skip] * (part.stop - part.start - 1 - len(present))]
    return vector


class SearchSpace(ABC):
    """Base class of every space. Subclasses set `name`, build `decisions` in `__init__` and
    implement `decode`, `encode` and `candidate_ops`. Contract: `decode(encode(a)) == a` for
    every `a` in the space, `encode(decode(v)) == canonical(v)`, and `size()` counts the distinct
    networks. Spaces where several vectors give one network override `canonical` and `size`."""

    name: str = ""

    def __init__(self, resolution: int, num_classes: int) -> None:
        self.resolution = resolution
        self.num_classes = num_classes
        self.decisions: list[Decision] = []
        self.options: dict[str, Any] = {}  # the keyword arguments `get_space` was given, JSON-able

    # -- to implement ------------------------------------------------------------------------------
    @abstractmethod
    def decode(self, vector: Sequence[int]) -> ArchSpec:
        """Indices (one per decision) -> architecture."""

    @abstractmethod
    def encode(self, arch: ArchSpec) -> np.ndarray:
        """Architecture -> its canonical indices; raises `SpecError` naming the block and field
        that do not fit when the architecture is not in the space."""

    @abstractmethod
    def candidate_ops(self) -> list[LayerShape]:
        """Every distinct (part, input shape) any architecture of the space can contain, stem and
        head included: exactly what a latency table must measure."""

    # -- may override ------------------------------------------------------------------------------
    def canonical(self, vector: Sequence[int]) -> list[int]:
        """The one vector of `vector`'s network (spaces override this with a direct rule, which
        the tests check against `encode(decode(v))`)."""
        return [int(i) for i in self.encode(self.decode(vector))]

    def size(self) -> int:
        """Number of distinct architectures; the number of vectors unless a space overrides it."""
        return self.num_vectors()

    def supernet_plan(self, **options: Any) -> SupernetPlan:
        """How a one-shot supernet (`nas.oneshot`) covers this space: its slots and where their
        layers sit. Spaces that support one-shot search override this; `options` are theirs."""
        raise SupernetPlanError(f"no supernet layout: {type(self).__name__} does not implement supernet_plan(); "
                                "the built-in proxyless (every layer) and mnasnet (per-stage MBConv kernel x "
                                "expansion) spaces do")

    # -- derived -----------------------------------------------------------------------------------
    @property
    def cardinalities(self) -> list[int]:
        return [len(decision.options) for decision in self.decisions]

    def num_vectors(self) -> int:
        return math.prod(self.cardinalities)

    def check_vector(self, vector: Sequence[int]) -> list[int]:
        if len(vector) != len(self.decisions):
            raise SpecError(f"{self.name}: vector has {len(vector)} entries, expected {len(self.decisions)}")
        out = []
        for index, (value, decision) in enumerate(zip(vector, self.decisions)):
            try:  # ints, numpy and torch integers; not floats (2.7 is no index) nor bools
                if isinstance(value, (bool, np.bool_)):
                    raise TypeError
                value = operator.index(value)
            except TypeError:
                raise SpecError(
                    f"{self.name}: vector[{index}] ({decision.name})={value!r} must be an integer index"
                ) from None
            if not 0 <= value < len(decision.options):
                raise SpecError(
                    f"{self.name}: vector[{index}] ({decision.name})={value} not in 0..{len(decision.options) - 1}"
                )
            out.append(value)
        return out

    def _check_frame(self, arch: ArchSpec, stem: Any, head: Any) -> None:
        """Only blocks are searched: `arch`'s input, classes, stem and head must be this space's."""
        for field, value in {"resolution": self.resolution, "num_classes": self.num_classes, "in_channels": 3}.items():
            if getattr(arch, field) != value:
                raise SpecError(f"{self.name}: {field}={getattr(arch, field)} does not fit this space ({value})")
        for path, actual, want in (("stem", arch.stem, stem), ("head", arch.head, head)):
            if mismatch := first_mismatch(path, actual, want):
                raise SpecError(f"{self.name}: {mismatch} does not fit")

    def sample(self, rng: np.random.Generator) -> ArchSpec:
        return self.decode([int(rng.integers(n)) for n in self.cardinalities])

    def mutate(self, arch: ArchSpec, rng: np.random.Generator) -> ArchSpec:
        """Change one decision of `arch`'s canonical vector so that the network changes. Decisions
        are tried in random order; one that leaves the network as it was (the expansion of a
        block type without one) is passed over, so the result always differs from `arch`."""
        vector = [int(i) for i in self.encode(arch)]
        positions = [i for i, n in enumerate(self.cardinalities) if n > 1]
        for position in rng.permutation(positions):
            options = [o for o in range(self.cardinalities[position]) if o != vector[position]]
            for option in rng.permutation(options):
                candidate = list(vector)
                candidate[position] = int(option)
                child = self.decode(candidate)
                if child != arch:
                    return child
        raise SpecError(f"{self.name}: no single decision changes this architecture (the space has one network)")

    def suggest(self, trial: Any) -> ArchSpec:
        """Ask an Optuna trial for one categorical per decision, named by the decision, valued by
        option index (so `study.enqueue_trial(space.to_params(vector))` replays a vector)."""
        return self.decode([trial.suggest_categorical(d.name, list(range(len(d.options)))) for d in self.decisions])

    def to_params(self, vector: Sequence[int]) -> dict[str, int]:
        """Vector -> `{decision name: option index}`, the parameters `suggest` asks Optuna for."""
        return {d.name: i for d, i in zip(self.decisions, self.check_vector(vector))}

    def from_params(self, params: dict[str, Any]) -> list[int]:
        """Optuna's `trial.params` (as `suggest` made them) -> vector."""
        missing = [d.name for d in self.decisions if d.name not in params]
        if missing:
            raise SpecError(f"{self.name}: parameter(s) {missing} missing")
        return self.check_vector([params[d.name] for d in self.decisions])

    def describe_vector(self, vector: Sequence[int]) -> dict[str, str]:
        """Vector -> `{decision name: option label}` for logs and reports (`stage3.kernel: 5`)."""
        return {d.name: d.labels[i] for d, i in zip(self.decisions, self.check_vector(vector))}

    def log10_size(self) -> float:
        return math.log10(self.size())

    def layer_signatures(self, arch: ArchSpec) -> list[str]:
        return [layer.signature for layer in layer_shapes(arch)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "decisions": len(self.decisions),
            "size": self.size(),
            "log10_size": round(self.log10_size(), 2),
        }

