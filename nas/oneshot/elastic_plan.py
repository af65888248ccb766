"""Which spaces an elastic (Once-for-All) supernet covers, and how their networks map onto it.

A space is covered when its networks are, stage by stage, the first `d` layers of a fixed stack
of positions, each position an MBConv whose kernel and expansion vary (OFA's elastic depth,
kernel and expansion). An `ElasticAdapter` per space says so as plain data (`ElasticStage`s) and
converts between the space's `ArchSpec`s and per-stage layer choices; the supernet knows no space
by name. Covered today: `proxyless` (all of it, any width_mult and resolution) and `fbnet` (all
of it, any resolution: the 9 ops per layer, skips included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from nas.oneshot.elastic_layers import ElasticChoice, ElasticMBConv, FixedBlock
from search_spaces.errors import OptionError
from search_spaces.space import SearchSpace
from search_spaces.spaces.fbnet import ACTIVATION as FB_ACTIVATION
from search_spaces.spaces.fbnet import OPS as FB_OPS
from search_spaces.spaces.fbnet import SKIP as FB_SKIP
from search_spaces.spaces.fbnet import STAGES as FB_STAGES
from search_spaces.spaces.fbnet import STEM_CHANNELS as FB_STEM
from search_spaces.spaces.fbnet import FBNetSpace
from search_spaces.spaces.fbnet import op_block as fb_op_block
from search_spaces.spaces.proxyless import KERNELS, PAIRS, ProxylessSpace
from search_spaces.spec import Activation, ArchSpec, BlockSpec, Op, SpecError
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["COVERED_SPACES", "SAMPLING", "ElasticAdapter", "ElasticStage", "LayerChoice", "adapter_for"]

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


def depth_probabilities(depths: np.ndarray, choices_per_layer: int, by: str) -> np.ndarray:
    if by not in SAMPLING:
        raise OptionError(f"sampling={by!r} not in {{{', '.join(SAMPLING)}}}")
    weights = np.array([float(choices_per_layer) ** d if by == "network" else 1.0 for d in depths])
    return weights / weights.sum()


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

    def position(self, stage: ElasticStage, j: int) -> nn.Module:
        """The module of layer `j` of `stage`: one elastic MBConv over the stage's choices."""
        return ElasticMBConv(stage.in_channels if j == 0 else stage.out_channels, stage.out_channels,
                             stage.stride if j == 0 else 1, stage.kernels, stage.expand_ratios, stage.activation)

    def largest(self) -> ArchSpec:
        return self.arch_of([[(max(s.kernels), max(s.expand_ratios))] * s.max_depth for s in self.stages])

    def smallest(self) -> ArchSpec:
        return self.arch_of([[(min(s.kernels), min(s.expand_ratios))] * s.min_depth for s in self.stages])

    def sample(self, rng: np.random.Generator, by: str = "network") -> ArchSpec:
        """`by="network"`: uniform over the space's networks (a stage of c choices per layer has
        c**d networks of depth d, so depth d is drawn with probability proportional to c**d);
        `by="choice"`: each stage's depth uniform, then each layer's choices (OFA's sampling,
        which trains shallow stages far more often)."""
        choices = []
        for stage in self.stages:
            c = stage.choices_per_layer
            depths = np.arange(stage.min_depth, stage.max_depth + 1)
            depth = int(rng.choice(depths, p=depth_probabilities(depths, c, by)))
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


def fbnet_family(block: BlockSpec) -> str:
    """Which shared path of an FBNet position runs `block`."""
    if block.op is Op.PW:
        return "pw"
    return "irf_g2" if block.groups == 2 else "irf"


class FBNetAdapter(ElasticAdapter):
    """Every FBNet layer is one position with shared paths: `irf` (kernel {3, 5} x expansion
    {1, 3, 6}: one elastic block, the e1 expand conv being the first `in` rows of the e6 one),
    `irf_g2` (k3/k5 e1 grouped: its own elastic-kernel block, since a grouped, shuffled tensor
    has no channel prefixes) and, at a stage's first layer where `skip` changes the shape, `pw`
    (the 1x1 conv). Depth: the first layer (any op, skip included) and then the first d of the
    others, which is the space's canonical form; a stage whose `skip` keeps the shape (stage1 at
    16 channels, stride 1) may be empty."""

    def __init__(self, space: FBNetSpace) -> None:
        super().__init__(space)
        stages, channels = [], FB_STEM
        for s, ((width, depth, _), stride) in enumerate(zip(FB_STAGES, space.strides), 1):
            identity = stride == 1 and channels == width
            if identity and depth > 1:  # a shape-keeping first skip would make depth ambiguous
                raise SupernetPlanError(f"fbnet: stage{s} keeps its shape and has {depth} layers; not covered")
            stages.append(ElasticStage(f"stage{s}", channels, width, stride, 0 if identity else 1, depth, (3, 5),
                                       (1.0, 3.0, 6.0), FB_ACTIVATION))
            channels = width
        self.stages = tuple(stages)

    def position(self, stage: ElasticStage, j: int) -> nn.Module:
        in_channels, stride = (stage.in_channels, stage.stride) if j == 0 else (stage.out_channels, 1)
        args = (in_channels, stage.out_channels, stride, stage.kernels)
        paths: dict[str, nn.Module] = {
            "irf": ElasticMBConv(*args, stage.expand_ratios, stage.activation, always_expand=True),
            "irf_g2": ElasticMBConv(*args, (1.0,), stage.activation, always_expand=True, groups=2)}
        if j == 0 and stage.min_depth == 1:
            paths["pw"] = FixedBlock(fb_op_block("skip", in_channels, stage.out_channels, stride), in_channels)
        return ElasticChoice(paths, fbnet_family)

    def ops_arch(self, ops: list[list[str]]) -> ArchSpec:
        """Per stage the op names of its present layers, first layer first (`[]`: an empty stage)."""
        vector = []
        for stage, names in zip(self.stages, ops):
            names = names or ["skip"]
            vector += [FB_OPS.index(n) for n in names] + [FB_SKIP] * (stage.max_depth - len(names))
        return self.space.decode(vector)

    def largest(self) -> ArchSpec:
        return self.ops_arch([["k5_e6"] * s.max_depth for s in self.stages])

    def smallest(self) -> ArchSpec:
        return self.ops_arch([[] if s.min_depth == 0 else ["k3_e1"] for s in self.stages])

    def sample(self, rng: np.random.Generator, by: str = "network") -> ArchSpec:
        """Uniform over networks (`by="network"`): the first layer one of the 9 ops (skip: absent
        or the 1x1 conv); then k more layers, k drawn with probability proportional to 8**k, each
        one of the 8 ops. `by="choice"`: k uniform."""
        layer_ops = [op for op in FB_OPS if op != "skip"]
        ops = []
        for stage in self.stages:
            first = FB_OPS[int(rng.integers(len(FB_OPS)))]
            extra = np.arange(stage.max_depth)
            count = int(rng.choice(extra, p=depth_probabilities(extra, len(layer_ops), by)))
            names = [first] + [layer_ops[int(rng.integers(len(layer_ops)))] for _ in range(count)]
            ops.append([] if names == ["skip"] and stage.min_depth == 0 else names)
        return self.ops_arch(ops)


# by class, so subclasses (a reduced proxyless space in tests) are covered too
ADAPTERS: tuple[tuple[type[SearchSpace], type[ElasticAdapter]], ...] = ((ProxylessSpace, ProxylessAdapter),
                                                                        (FBNetSpace, FBNetAdapter))
COVERED_SPACES = ("proxyless", "fbnet")


def adapter_for(space: SearchSpace) -> ElasticAdapter:
    for space_class, adapter in ADAPTERS:
        if isinstance(space, space_class):
            return adapter(space)
    raise SupernetPlanError(f"elastic supernet: space={space.name!r} is not covered; "
                            f"covered spaces: {', '.join(COVERED_SPACES)}")
