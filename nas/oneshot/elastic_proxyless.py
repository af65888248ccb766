"""The `proxyless` space on an elastic supernet: all of it, any width_mult and resolution."""

from __future__ import annotations

from nas.oneshot.elastic_plan import ElasticAdapter, ElasticStage, LayerChoice
from search_spaces.spaces.proxyless import KERNELS, PAIRS, ProxylessSpace
from search_spaces.spec import Activation, ArchSpec

__all__ = ["ProxylessAdapter"]


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
