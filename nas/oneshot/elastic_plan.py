"""What an elastic (Once-for-All) supernet needs to know of a space, as plain data and a few
conversions: `ElasticStage`s (positions sharing an output width, of which a sub-network runs the
first d) and an `ElasticAdapter` per covered space (`elastic_proxyless`, `elastic_fbnet`,
`elastic_mnasnet`; `elastic_spaces` maps spaces to them) that turns the space's `ArchSpec`s into per-stage blocks,
draws sub-networks and builds each position's module. The supernet knows no space by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from nas.oneshot.elastic_layers import ElasticMBConv
from search_spaces.build import build_head
from search_spaces.errors import OptionError
from search_spaces.space import SearchSpace
from search_spaces.spec import Activation, ArchSpec, BlockSpec, SpecError
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["ALL", "SAMPLING", "ElasticAdapter", "ElasticStage", "LayerChoice", "depth_probabilities"]

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


SAMPLING = ("network", "choice")
ALL = None  # `elastic=ALL`: every dimension of the space is free (the whole space)


def is_free(dimension: str, elastic: frozenset[str] | None) -> bool:
    return elastic is None or dimension in elastic


def depth_probabilities(depths: np.ndarray, choices_per_layer: int, by: str) -> np.ndarray:
    if by not in SAMPLING:
        raise OptionError(f"sampling={by!r} not in {{{', '.join(SAMPLING)}}}")
    weights = np.array([float(choices_per_layer) ** d if by == "network" else 1.0 for d in depths])
    return weights / weights.sum()


class ElasticAdapter:
    """One covered space: its stages and the conversions (subclass per space).

    `dimensions` are the elastic dimensions in the order progressive shrinking frees them
    (Cai et al., ICLR 2020, Sec. 3.2: kernel, then depth, then expansion, then width). `smallest`
    and `sample` take `elastic`, the dimensions free in the current phase (None: all); a fixed
    dimension stays at its largest value."""

    dimensions: tuple[str, ...] = ("kernel", "depth", "expand")

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

    def position(self, stage: ElasticStage, j: int) -> nn.Module:
        """The module of layer `j` of `stage`: one elastic MBConv over the stage's choices."""
        return ElasticMBConv(stage.in_channels if j == 0 else stage.out_channels, stage.out_channels,
                             stage.stride if j == 0 else 1, stage.kernels, stage.expand_ratios, stage.activation)

    def head(self, reference: ArchSpec) -> nn.Module:
        """The supernet's head, built for the largest network `reference`."""
        return build_head(reference)

    def largest(self) -> ArchSpec:
        return self.arch_of([[(max(s.kernels), max(s.expand_ratios))] * s.max_depth for s in self.stages])

    def _free_options(self, stage: ElasticStage, elastic: frozenset[str] | None):
        kernels = stage.kernels if is_free("kernel", elastic) else (max(stage.kernels),)
        ratios = stage.expand_ratios if is_free("expand", elastic) else (max(stage.expand_ratios),)
        depths = np.arange(stage.min_depth if is_free("depth", elastic) else stage.max_depth, stage.max_depth + 1)
        return kernels, ratios, depths

    def smallest(self, elastic: frozenset[str] | None = ALL) -> ArchSpec:
        choices = []
        for stage in self.stages:
            kernels, ratios, depths = self._free_options(stage, elastic)
            choices.append([(min(kernels), min(ratios))] * int(depths[0]))
        return self.arch_of(choices)

    def sample(self, rng: np.random.Generator, by: str = "network", elastic: frozenset[str] | None = ALL) -> ArchSpec:
        """`by="network"`: uniform over the space's networks (a stage of c choices per layer has
        c**d networks of depth d, so depth d is drawn with probability proportional to c**d);
        `by="choice"`: each stage's depth uniform, then each layer's choices (OFA's sampling,
        which trains shallow stages far more often). Dimensions not in `elastic` stay largest."""
        choices = []
        for stage in self.stages:
            kernels, ratios, depths = self._free_options(stage, elastic)
            depth = int(rng.choice(depths, p=depth_probabilities(depths, len(kernels) * len(ratios), by)))
            layers = []
            for _ in range(depth):
                kernel = kernels[int(rng.integers(len(kernels)))]
                layers.append((kernel, ratios[int(rng.integers(len(ratios)))]))
            choices.append(layers)
        return self.arch_of(choices)
