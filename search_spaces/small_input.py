"""ImageNet networks on small inputs (CIFAR-10, digits): the stride rule that keeps a 32 px input
from shrinking to a 1x1 map. The spaces apply it through `small_input_strides`; zoo specs, whose
stems may pool and whose blocks may be ShuffleNetV2 units, go through `small_input`.

1. The stem keeps stride 1 and loses its max-pool (ShuffleNetV2's), as the CIFAR variants of
   MobileNetV2 do and as the `mnasnet` space does at <= 64 px.
2. While the final feature map would be smaller than `MIN_FINAL_MAP` (4x4), the first stride-2
   block that is *not* a ShuffleNetV2 unit is set to stride 1. A stride-1 ShuffleNetV2 unit must
   keep its input width (channel split), so making a width-changing shuffle unit stride 1 would
   give an invalid network; its stride is left alone and another block is changed instead.

At 32 px: MobileNetV2, MnasNet-A1/B1 and GhostNet 1.0 -> stem s1 plus their first stride-2 block
at s1 (4x4 final map, the `mnasnet` space's strides); ShuffleNetV2 -> stem s1 without pool, no
block changed (its three stride-2 shuffle stages end at 4x4).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from search_spaces.build import block_output_size, stem_output_size
from search_spaces.space import SMALL_INPUT_MAX_RESOLUTION
from search_spaces.spec import ArchSpec, Op

logger = logging.getLogger(__name__)

MIN_FINAL_MAP = 4


def final_map_size(spec: ArchSpec) -> int:
    """Side of the feature map that reaches the head."""
    size = stem_output_size(spec.stem, spec.resolution)
    for block in spec.blocks:
        size = block_output_size(block, size)
    return size


def small_input(spec: ArchSpec, min_map: int = MIN_FINAL_MAP) -> ArchSpec:
    """`spec` with the module's rule applied; unchanged above 64 px (the ImageNet setting)."""
    if spec.resolution > SMALL_INPUT_MAX_RESOLUTION:
        return spec
    spec = spec.replace(stem=replace(spec.stem, stride=1, pool=False))
    blocks = list(spec.blocks)
    while final_map_size(spec.replace(blocks=tuple(blocks))) < min_map:
        index = next((i for i, b in enumerate(blocks) if b.stride == 2 and b.op is not Op.SHUFFLE), None)
        if index is None:  # only shuffle units down-sample: nothing may change without breaking widths
            logger.warning("%s: final map < %d but no non-shuffle stride-2 block left", spec.name, min_map)
            break
        blocks[index] = replace(blocks[index], stride=1)
    return spec.replace(blocks=tuple(blocks))
