"""Which spaces an elastic (Once-for-All) supernet covers, and how their networks map onto it.

A space is covered when its networks are, stage by stage, the first `d` layers of a fixed stack
of positions, each position an MBConv whose kernel and expansion vary (OFA's elastic depth,
kernel and expansion). An `ElasticAdapter` per space says so as plain data (`ElasticStage`s) and
converts between the space's `ArchSpec`s and per-stage layer choices; the supernet knows no space
by name. Covered today: `proxyless` (all of it, any width_mult and resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search_spaces.space import SearchSpace
from search_spaces.spaces.proxyless import KERNELS, PAIRS, ProxylessSpace
from search_spaces.spec import Activation, ArchSpec, BlockSpec, SpecError
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["COVERED_SPACES", "ElasticAdapter", "ElasticStage", "LayerChoice", "adapter_for"]

# (kernel, expand_ratio) of one active layer
LayerChoice = tuple[int, float]


@dataclass(frozen=True, slots=True)
class ElasticStage:
    """Positions sharing an output width: the first takes `in_channels` at `stride`, the rest
    `out_channels` at stride 1; a network uses the first d, `min_depth` <= d <= `max_depth`."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    min_depth: int
    max_depth: int
    kernels: tuple[int, ...]
    expand_ratios: tuple[float, ...]
    activation: Activation

    @property
    def choices_per_layer(self) -> int:
        return len(self.kernels) * len(self.expand_ratios)


class ElasticAdapter:
    """One covered space: its stages and the conversions (subclass per space)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.stages: tuple[ElasticStage, ...] = ()

    def covers(self, arch: ArchSpec) -> None:
        try:
            self.space.encode(arch)
        except SpecError as error:
            raise SupernetPlanError(f"elastic supernet over {self.space.name}: {error}") from None

    def layers_of(self, arch: ArchSpec) -> list[list[BlockSpec]]:
        """`arch`'s blocks grouped by stage (after `covers`): consecutive blocks of the stage's width."""
        self.covers(arch)
        out, position = [], 0
        for stage in self.stages:
            layers = []
            while (position < len(arch.blocks) and len(layers) < stage.max_depth
                   and arch.blocks[position].out_channels == stage.out_channels):
                layers.append(arch.blocks[position])
                position += 1
            out.append(layers)
        return out

    def arch_of(self, choices: list[list[LayerChoice]]) -> ArchSpec:
        raise NotImplementedError

    def largest(self) -> ArchSpec:
        return self.arch_of([[(max(s.kernels), max(s.expand_ratios))] * s.max_depth for s in self.stages])

    def smallest(self) -> ArchSpec:
        return self.arch_of([[(min(s.kernels), min(s.expand_ratios))] * s.min_depth for s in self.stages])

    def sample(self, rng: np.random.Generator) -> ArchSpec:
        """Uniform over the space's networks: a stage of c choices per layer has c**d networks of
        depth d, so depth d is drawn with probability proportional to c**d."""
        choices = []
        for stage in self.stages:
            c = stage.choices_per_layer
            depths = np.arange(stage.min_depth, stage.max_depth + 1)
            weights = np.array([float(c) ** d for d in depths])
            depth = int(rng.choice(depths, p=weights / weights.sum()))
            layers = []
            for _ in range(depth):
                kernel = stage.kernels[int(rng.integers(len(stage.kernels)))]
                layers.append((kernel, stage.expand_ratios[int(rng.integers(len(stage.expand_ratios)))]))
            choices.append(layers)
        return self.arch_of(choices)


class ProxylessAdapter(ElasticAdapter):
    """The first block (expansion 1, kernel 3/5/7) is a stage of one position; each of the six
    stages is up to 4 (last: 1) positions of kernel {3, 5, 7} x expansion {3, 6}. A skipped
    layer is absent, so "first d layers" is exactly the space's canonical form."""

    def __init__(self, space: ProxylessSpace) -> None:
        super().__init__(space)
        act = space.head.activation or Activation.RELU6
        stages = [ElasticStage("first", space.stem.out_channels, space.first_channels, 1, 1, 1, KERNELS, (1.0,), act)]
        channels = space.first_channels
        kernels = tuple(sorted({k for k, _ in PAIRS}))
        ratios = tuple(sorted({e for _, e in PAIRS}))
        for s, (width, stride, depth) in enumerate(zip(space.widths, space.strides, space.depths), 1):
            stages.append(ElasticStage(f"stage{s}", channels, width, stride, 1, depth, kernels, ratios, act))
            channels = width
        self.stages = tuple(stages)

    def arch_of(self, choices: list[list[LayerChoice]]) -> ArchSpec:
        first, *rest = choices
        vector = [KERNELS.index(first[0][0])]
        for stage, layers in zip(self.stages[1:], rest):
            vector += [PAIRS.index(pair) + (0 if j == 0 else 1) for j, pair in enumerate(layers)]
            vector += [0] * (stage.max_depth - len(layers))
        return self.space.decode(vector)


# by class, so subclasses (a reduced proxyless space in tests) are covered too
ADAPTERS: tuple[tuple[type[SearchSpace], type[ElasticAdapter]], ...] = ((ProxylessSpace, ProxylessAdapter),)
COVERED_SPACES = ("proxyless",)


def adapter_for(space: SearchSpace) -> ElasticAdapter:
    for space_class, adapter in ADAPTERS:
        if isinstance(space, space_class):
            return adapter(space)
    raise SupernetPlanError(f"elastic supernet: space={space.name!r} is not covered; "
                            f"covered spaces: {', '.join(COVERED_SPACES)}")
