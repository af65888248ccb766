"""`proxyless`: the ProxylessNAS mobile space (Cai et al., ICLR 2019, section 4.2; also the
MobileNetV2-based space of Once-for-All's ProxylessNAS supernet).

    stem     3x3 conv 32, stride 2, ReLU6
    first    MBConv expansion 1 -> 16 channels, stride 1, kernel searched {3, 5, 7}
    stages   24, 40, 80, 96, 192, 320 channels; at most 4, 4, 4, 4, 4, 1 layers; strides 2, 2, 2, 1, 2, 1
             each layer MBConv with kernel {3, 5, 7} x expansion {3, 6}; every non-first layer of a
             stage may be skipped (the identity: the layer is absent from the ArchSpec)
    head     1x1 conv 1280 ReLU6, global pool, dropout 0.1 (ProxylessNAS-Mobile's training
             setting, mit-han-lab/proxylessnas search/README.md), classifier
    ReLU6 everywhere, no squeeze-excite.

At 224 px these are exactly the blocks of the published Pixel 1 latency table (`mobile_trim.yaml`,
72 keys: our 69 blocks and the stem one key each, our head = `Conv_1` + `Logits`).

Decision layout: `first.kernel` (3 options), then one decision per layer position,
`stage<s>.layer<j>`: the first layer of a stage picks one of the 6 (kernel, expansion) pairs, every
other layer one of 7 (`skip` or a pair), as ProxylessNAS's mixed op does (its zero op is `skip`).
22 decisions. A skipped layer is simply absent, so `[A, skip, B, skip]` and `[A, B, skip, skip]`
are one network; its canonical vector has the stage's skips last. With that, every change of one
entry of a canonical vector changes the network (a pair for another, a layer removed or added),
so mutation never wastes a step, and the number of networks is exact:
`3 * prod over stages of 6 * (6**0 + 6**1 + ... + 6**(L-1))` for a stage of at most L layers.
(Once-for-All's layout, a depth per stage plus a kernel and an expansion per position, would
leave the decisions of absent layers without effect: neither exact nor a mutation every time.)

At 64 px or less the stem and the 24-wide stage keep stride 1 (`small_input_strides`): 32 px
ends in a 4x4 map. The 72 published keys are for 224 px only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from search_spaces.blocks import make_divisible
from search_spaces.build import LayerShape, conv_output_size
from search_spaces.space import Decision, SearchSpace, first_mismatch, skips_last, small_input_strides
from search_spaces.spec import Activation, ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec
from search_spaces.supernet_plan import Slot, SupernetPlan, SupernetPlanError

# (channels, most layers, stride) at 224 px
STAGES: tuple[tuple[int, int, int], ...] = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
STEM_CHANNELS = 32
FIRST_CHANNELS = 16
HEAD_CHANNELS = 1280
KERNELS = (3, 5, 7)
EXPAND_RATIOS = (3.0, 6.0)
DROPOUT = 0.1
ACTIVATION = Activation.RELU6
# the (kernel, expansion) pairs of one layer, kernel-major as ProxylessNAS lists its candidates
PAIRS: tuple[tuple[int, float], ...] = tuple((k, e) for k in KERNELS for e in EXPAND_RATIOS)
PAIR_LABELS = tuple(f"k{k}_e{e:g}" for k, e in PAIRS)
SKIP = 0  # index of `skip` in a non-first layer's options


class ProxylessSpace(SearchSpace):
    """The ProxylessNAS mobile space; `width_mult` scales every width as ProxylessNAS-Mobile-14
    does (multiples of 8; the 1280 head only grows)."""

    name = "proxyless"

    def __init__(self, resolution: int = 224, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__(resolution, num_classes)
        if not 0 < width_mult <= 4:
            raise SpecError(f"proxyless: width_mult={width_mult} must be in (0, 4]")
        self.width_mult = width_mult
        stem_stride, strides = small_input_strides(resolution, 2, [stride for _, _, stride in STAGES])
        self.stem = StemSpec(make_divisible(STEM_CHANNELS * width_mult, 8), 3, stem_stride, ACTIVATION)
        self.first_channels = make_divisible(FIRST_CHANNELS * width_mult, 8)
        head = HEAD_CHANNELS if width_mult <= 1 else make_divisible(HEAD_CHANNELS * width_mult, 8)
        self.head = HeadSpec(conv_channels=head, activation=ACTIVATION, dropout=DROPOUT)
        self.widths = [make_divisible(channels * width_mult, 8) for channels, _, _ in STAGES]
        if any(a >= b for a, b in zip([self.first_channels, *self.widths], self.widths)):
            # equal neighbouring widths would make stage boundaries (and so encode) ambiguous
            raise SpecError(f"proxyless: width_mult={width_mult} gives non-increasing stage widths {self.widths}")
        self.strides = strides
        self.depths = [depth for _, depth, _ in STAGES]
        self.decisions = [Decision("first.kernel", KERNELS)]
        for s, depth in enumerate(self.depths, 1):
            self.decisions.append(Decision(f"stage{s}.layer1", PAIRS, PAIR_LABELS))
            for j in range(2, depth + 1):
                self.decisions.append(Decision(f"stage{s}.layer{j}", (None, *PAIRS), ("skip", *PAIR_LABELS)))

    def supernet_plan(self, **options: Any) -> SupernetPlan:
        """Decision `i` is block `i` and a `None` option removes it: one slot per decision, named
        and labelled like it, its skip option the slot's."""
        if options:
            raise SupernetPlanError(f"the layout takes no options, got {sorted(options)}")
        slots, base = [], []
        for index, decision in enumerate(self.decisions):
            present = [o for o, option in enumerate(decision.options) if option is not None]
            if not present:
                raise SupernetPlanError(f"decision {decision.name!r} only offers skip")
            skips = [o for o, option in enumerate(decision.options) if option is None]
            slots.append(Slot(decision.name, decision.labels, tuple(((index, o),) for o in range(len(decision.options))),
                              skips[0] if skips else None))
            base.append(present[0])
        return SupernetPlan(tuple(slots), tuple(base), tuple((i,) for i in range(len(slots))))

    # -- vector <-> architecture -------------------------------------------------------------------
    def _stage_slices(self) -> list[slice]:
        out, start = [], 1
        for depth in self.depths:
            out.append(slice(start, start + depth))
            start += depth
        return out

    def _block(self, pair: tuple[int, float], channels: int, stride: int) -> BlockSpec:
        kernel, expand_ratio = pair
        return BlockSpec(Op.MBCONV, channels, stride, kernel, expand_ratio, activation=ACTIVATION)

    def _first_block(self, kernel: int) -> BlockSpec:
        return BlockSpec(Op.MBCONV, self.first_channels, 1, kernel, 1.0, activation=ACTIVATION)

    def decode(self, vector: Sequence[int]) -> ArchSpec:
        v = self.check_vector(vector)
        blocks = [self._first_block(KERNELS[v[0]])]
        for part, width, stride in zip(self._stage_slices(), self.widths, self.strides):
            choices = [self.decisions[part.start + j].options[index] for j, index in enumerate(v[part])]
            present = [pair for pair in choices if pair is not None]
            blocks += [self._block(pair, width, stride if j == 0 else 1) for j, pair in enumerate(present)]
        return ArchSpec(self.stem, tuple(blocks), self.head, self.resolution, self.num_classes,
                        name=f"{self.name}@{self.resolution}")

    def canonical(self, vector: Sequence[int]) -> list[int]:
        return skips_last(self.check_vector(vector), self._stage_slices(), SKIP)

    def encode(self, arch: ArchSpec) -> np.ndarray:
        self._check_frame(arch, self.stem, self.head)
        blocks = arch.blocks
        first = blocks[0]
        if first.kernel not in KERNELS:
            raise SpecError(f"proxyless: blocks[0].kernel={first.kernel} not in {{3, 5, 7}}")
        self._check_block(first, self._first_block(first.kernel), 0)
        vector, position = [KERNELS.index(first.kernel)], 1
        for s, (width, stride, depth) in enumerate(zip(self.widths, self.strides, self.depths), 1):
            if position >= len(blocks) or blocks[position].out_channels != width:
                found = "the blocks end" if position >= len(blocks) else (
                    f"blocks[{position}].out_channels={blocks[position].out_channels}")
                raise SpecError(f"proxyless: {found}, but stage{s} must start there with {width} channels")
            count = 0
            while position < len(blocks) and blocks[position].out_channels == width:
                if count == depth:
                    raise SpecError(f"proxyless: blocks[{position}] is layer {count + 1} of stage{s}, "
                                    f"which has at most {depth} layer(s)")
                block = blocks[position]
                pair = (block.kernel, block.expand_ratio)
                if pair not in PAIRS:
                    raise SpecError(f"proxyless: blocks[{position}] kernel={block.kernel}, "
                                    f"expand_ratio={block.expand_ratio:g} not in {{{', '.join(PAIR_LABELS)}}}")
                self._check_block(block, self._block(pair, width, stride if count == 0 else 1), position)
                vector.append(PAIRS.index(pair) + (0 if count == 0 else 1))
                count, position = count + 1, position + 1
            vector += [SKIP] * (depth - count)
        if position != len(blocks):
            raise SpecError(f"proxyless: blocks[{position}] (out_channels={blocks[position].out_channels}) "
                            f"follows the last stage; widths must be {self.widths}")
        return np.array(vector, dtype=np.int64)

    def _check_block(self, block: BlockSpec, expected: BlockSpec, position: int) -> None:
        if mismatch := first_mismatch(f"blocks[{position}]", block, expected):
            raise SpecError(f"proxyless: {mismatch} does not fit")

    # -- counting and latency-table keys -----------------------------------------------------------
    def size(self) -> int:
        pairs = len(PAIRS)
        per_stage = [pairs * sum(pairs**d for d in range(depth)) for depth in self.depths]
        return len(KERNELS) * math.prod(per_stage)

    def candidate_ops(self) -> list[LayerShape]:
        size = conv_output_size(self.resolution, self.stem.stride)
        stem = LayerShape("stem", "stem", 3, self.resolution, self.stem.out_channels, size, self.stem)
        shapes = [stem]
        for kernel in KERNELS:
            shapes.append(LayerShape("first", "block", self.stem.out_channels, size, self.first_channels, size,
                                     self._first_block(kernel)))
        channels = self.first_channels
        for s, (width, stride, depth) in enumerate(zip(self.widths, self.strides, self.depths), 1):
            out = conv_output_size(size, stride)
            for pair in PAIRS:
                shapes.append(LayerShape(f"stage{s}.first", "block", channels, size, width, out,
                                         self._block(pair, width, stride)))
            if depth > 1:
                for pair in PAIRS:
                    shapes.append(LayerShape(f"stage{s}.rest", "block", width, out, width, out,
                                             self._block(pair, width, 1)))
            channels, size = width, out
        shapes.append(LayerShape("head", "head", channels, size, self.num_classes, 1, self.head))
        return shapes
