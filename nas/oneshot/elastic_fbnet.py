"""The `fbnet` space on an elastic supernet: all of it, any resolution (the 9 ops per layer,
skips included)."""

from __future__ import annotations

import numpy as np
from torch import nn

from nas.oneshot.elastic_layers import ElasticChoice, ElasticMBConv, FixedBlock
from nas.oneshot.elastic_plan import ALL, ElasticAdapter, ElasticStage, depth_probabilities, is_free
from search_spaces.spaces.fbnet import ACTIVATION as FB_ACTIVATION
from search_spaces.spaces.fbnet import OPS as FB_OPS
from search_spaces.spaces.fbnet import SKIP as FB_SKIP
from search_spaces.spaces.fbnet import STAGES as FB_STAGES
from search_spaces.spaces.fbnet import STEM_CHANNELS as FB_STEM
from search_spaces.spaces.fbnet import FBNetSpace
from search_spaces.spaces.fbnet import op_block as fb_op_block
from search_spaces.spec import ArchSpec, BlockSpec, Op
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["FBNetAdapter", "fbnet_family"]


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

    @staticmethod
    def layer_ops(elastic: frozenset[str] | None) -> list[str]:
        """The non-skip ops free under `elastic`: a fixed kernel is 5, a fixed expansion 6 (the
        grouped e1 ops count as expansions: they come with the expansion phase)."""
        return [op for op in FB_OPS if op != "skip" and (is_free("kernel", elastic) or op.startswith("k5"))
                and (is_free("expand", elastic) or op.endswith("_e6"))]

    def smallest(self, elastic: frozenset[str] | None = ALL) -> ArchSpec:
        if elastic is None:
            return self.ops_arch([[] if s.min_depth == 0 else ["k3_e1"] for s in self.stages])
        op = self.layer_ops(elastic)[0]  # FB_OPS lists small kernels and expansions first
        if is_free("depth", elastic):
            return self.ops_arch([[] if s.min_depth == 0 else [op] for s in self.stages])
        return self.ops_arch([[op] * s.max_depth for s in self.stages])

    def sample(self, rng: np.random.Generator, by: str = "network", elastic: frozenset[str] | None = ALL) -> ArchSpec:
        """Uniform over networks (`by="network"`): the first layer one of the 9 ops (skip: absent
        or the 1x1 conv); then k more layers, k drawn with probability proportional to 8**k, each
        one of the 8 ops. `by="choice"`: k uniform. With `elastic`, only the free ops (see
        `layer_ops`), and without depth every layer present."""
        layer_ops = self.layer_ops(elastic)
        first_ops = layer_ops + ["skip"] if is_free("depth", elastic) else layer_ops
        ops = []
        for stage in self.stages:
            first = first_ops[int(rng.integers(len(first_ops)))]
            extra = np.arange(stage.max_depth) if is_free("depth", elastic) else np.array([stage.max_depth - 1])
            count = int(rng.choice(extra, p=depth_probabilities(extra, len(layer_ops), by)))
            names = [first] + [layer_ops[int(rng.integers(len(layer_ops)))] for _ in range(count)]
            ops.append([] if names == ["skip"] and stage.min_depth == 0 else names)
        return self.ops_arch(ops)
