"""A two-stage search space small enough to enumerate, shared by latency and search tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from search_spaces.build import LayerShape, layer_shapes
from search_spaces.space import Decision, SearchSpace
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec

KERNELS = (3, 5)
EXPANDS = (1, 3)
DEPTHS = (1, 2)


class TinySpace(SearchSpace):
    """stem 8 -> stage of mbconv(k, e) x depth at 16 ch, stride 2 -> head; 8 architectures."""

    name = "tiny"

    def __init__(self, resolution: int = 16, num_classes: int = 4) -> None:
        super().__init__(resolution, num_classes)
        self.decisions = [Decision("kernel", KERNELS), Decision("expand", EXPANDS), Decision("depth", DEPTHS)]

    def decode(self, vector: Sequence[int]) -> ArchSpec:
        k, e, d = self.check_vector(vector)
        blocks = [BlockSpec(Op.MBCONV, 16, stride=2 if i == 0 else 1, kernel=KERNELS[k], expand_ratio=EXPANDS[e])
                  for i in range(DEPTHS[d])]
        return ArchSpec(StemSpec(8), tuple(blocks), HeadSpec(conv_channels=32, dropout=0.0),
                        resolution=self.resolution, num_classes=self.num_classes)

    def encode(self, arch: ArchSpec) -> np.ndarray:
        first = arch.blocks[0]
        try:
            return np.array([KERNELS.index(first.kernel), EXPANDS.index(first.expand_ratio),
                             DEPTHS.index(len(arch.blocks))])
        except ValueError:
            raise SpecError("architecture is not in the tiny space") from None

    def all_archs(self) -> list[ArchSpec]:
        return [self.decode(v) for v in itertools.product(*(range(n) for n in self.cardinalities))]

    def candidate_ops(self) -> list[LayerShape]:
        seen: dict[str, LayerShape] = {}
        for arch in self.all_archs():
            for layer in layer_shapes(arch):
                seen.setdefault(layer.signature, layer)
        return list(seen.values())
