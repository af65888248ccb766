"""`fbnet`: the FBNet space (Wu et al., CVPR 2019, Tables 1-2), as HW-NAS-Bench uses it (Li et
al., ICLR 2021: `FBNet_Infer`, the CIFAR-100 and ImageNet settings).

    stem     3x3 conv 16 + BN + ReLU, stride 2 (stride 1 at 64 px or less)
    stages   16, 24, 32, 64, 112, 184, 352 channels; 1, 4, 4, 4, 4, 4, 1 layers; strides
             1, 2, 2, 2, 1, 2, 1 at 224 px, 1, 1, 2, 2, 1, 2, 1 at 64 px or less (HW-NAS-Bench's
             CIFAR setting: `small_input_strides`)
    layers   22 searchable layers, each one of 9 ops (HW-NAS-Bench's order):
             k3_e1, k3_e1_g2, k3_e3, k3_e6, k5_e1, k5_e1_g2, k5_e3, k5_e6, skip
             kK_eE: op `irf` (1x1 expand, present even at e1, + BN + ReLU; depthwise KxK + BN + ReLU;
             linear 1x1; identity shortcut when shapes match); `_g2`: both 1x1s grouped in two,
             with a channel shuffle after the first; `skip`: nothing where the shape is kept
             (the layer is absent from the ArchSpec), else a 1x1 conv + BN + ReLU (op `pw`)
    head     1x1 conv + BN + ReLU to 1504 (64 px or less) or 1984 (224 px), pool, classifier

Architectures are written, as HW-NAS-Bench and HELP do, as the 22 op names (`arch_string` joins
them with `-`; `from_arch_string` reads them back). A skipped layer is absent, so within a stage
`[A, skip, B, skip]` and `[A, B, skip, skip]` are one network: its canonical vector has the stage's
skips last (HW-NAS-Bench's per-layer latencies agree: layers of equal shape cost the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from search_spaces.build import LayerShape, conv_output_size
from search_spaces.space import Decision, SearchSpace, first_mismatch, skips_last, small_input_strides
from search_spaces.spec import Activation, ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
SKIP = OPS.index("skip")
# (channels, layers, stride at 224 px)
STAGES: tuple[tuple[int, int, int], ...] = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1),
                                            (184, 4, 2), (352, 1, 1))
LAYERS = sum(depth for _, depth, _ in STAGES)  # 22
STEM_CHANNELS = 16
ACTIVATION = Activation.RELU


def head_channels(resolution: int) -> int:
    """1504 in HW-NAS-Bench's CIFAR setting (64 px or less), 1984 in the FBNet paper's (ImageNet)."""
    return 1504 if resolution <= 64 else 1984


def stage_strides(resolution: int) -> tuple[int, list[int]]:
    return small_input_strides(resolution, 2, [stride for _, _, stride in STAGES])


def op_block(op: str, in_channels: int, out_channels: int, stride: int) -> BlockSpec | None:
    """One layer's block; None for a `skip` that keeps the shape (the layer is absent)."""
    if op not in OPS:
        raise SpecError(f"fbnet: op {op!r} not in {{{', '.join(OPS)}}}")
    if op == "skip":
        if stride == 1 and in_channels == out_channels:
            return None
        return BlockSpec(Op.PW, out_channels, stride, 1, activation=ACTIVATION)
    kernel, expand = int(op[1]), float(op.split("_")[1][1:])
    groups = 2 if op.endswith("_g2") else 1
    return BlockSpec(Op.IRF, out_channels, stride, kernel, expand, activation=ACTIVATION, groups=groups)


def block_op(block: BlockSpec) -> str | None:
    """The op name of a block of this space, or None when it is not one."""
    if block.op is Op.PW:
        return "skip"
    if block.op is not Op.IRF:
        return None
    name = f"k{block.kernel}_e{block.expand_ratio:g}" + ("_g2" if block.groups == 2 else "")
    return name if name in OPS else None


def fbnet_blocks(ops: Sequence[str], resolution: int) -> list[BlockSpec]:
    """The blocks of the 22 layers' ops (the zoo's FBNet-A/B/C and `FBNetSpace.decode`)."""
    if len(ops) != LAYERS:
        raise SpecError(f"fbnet: {len(ops)} ops given, expected {LAYERS} (one per searchable layer)")
    _, strides = stage_strides(resolution)
    blocks, channels, position = [], STEM_CHANNELS, 0
    for (width, depth, _), stride in zip(STAGES, strides):
        for j in range(depth):
            block = op_block(ops[position], channels, width, stride if j == 0 else 1)
            if block is not None:
                blocks.append(block)
            channels, position = width, position + 1
    return blocks


class FBNetSpace(SearchSpace):
    name = "fbnet"

    def __init__(self, resolution: int = 224, num_classes: int = 1000) -> None:
        super().__init__(resolution, num_classes)
        stem_stride, self.strides = stage_strides(resolution)
        self.stem = StemSpec(STEM_CHANNELS, 3, stem_stride, ACTIVATION)
        self.head = HeadSpec(conv_channels=head_channels(resolution), activation=ACTIVATION, dropout=0.2)
        self.decisions = [Decision(f"stage{s}.layer{j}", OPS)
                          for s, (_, depth, _) in enumerate(STAGES, 1) for j in range(1, depth + 1)]

    # -- op names <-> vectors ----------------------------------------------------------------------
    @staticmethod
    def parse_ops(text: str) -> list[int]:
        """`k3_e1-skip-...` (22 op names joined by `-`) -> indices; errors name the bad part."""
        names = text.strip().split("-")
        if len(names) != LAYERS:
            raise SpecError(f"fbnet: {len(names)} layer(s) in {text!r}, expected {LAYERS} op names joined by '-'")
        unknown = [f"layer {i + 1} {name!r}" for i, name in enumerate(names) if name not in OPS]
        if unknown:
            raise SpecError(f"fbnet: unknown op(s) {', '.join(unknown)}; ops: {', '.join(OPS)}")
        return [OPS.index(name) for name in names]

    def arch_string(self, arch: ArchSpec) -> str:
        return "-".join(OPS[i] for i in self.encode(arch))

    def from_arch_string(self, text: str) -> ArchSpec:
        return self.decode(self.parse_ops(text))

    # -- vector <-> architecture -------------------------------------------------------------------
    def _stage_slices(self) -> list[slice]:
        out, start = [], 0
        for _, depth, _ in STAGES:
            out.append(slice(start, start + depth))
            start += depth
        return out

    def decode(self, vector: Sequence[int]) -> ArchSpec:
        v = self.check_vector(vector)
        blocks = fbnet_blocks([OPS[i] for i in v], self.resolution)
        return ArchSpec(self.stem, tuple(blocks), self.head, self.resolution, self.num_classes,
                        name=f"{self.name}@{self.resolution}")

    def _identity_first(self, stage: int) -> bool:
        """Whether a `skip` at the stage's first layer keeps the shape (so the layer is absent)."""
        channels = STEM_CHANNELS if stage == 0 else STAGES[stage - 1][0]
        return self.strides[stage] == 1 and channels == STAGES[stage][0]

    def canonical(self, vector: Sequence[int]) -> list[int]:
        return skips_last(self.check_vector(vector), self._stage_slices(), SKIP)

    def encode(self, arch: ArchSpec) -> np.ndarray:
        self._check_frame(arch, self.stem, self.head)
        blocks, position, vector, channels = arch.blocks, 0, [], STEM_CHANNELS
        for s, ((width, depth, _), stride) in enumerate(zip(STAGES, self.strides)):
            count = 0
            while position < len(blocks) and blocks[position].out_channels == width:
                if count == depth:
                    raise SpecError(f"fbnet: blocks[{position}] is layer {count + 1} of stage{s + 1}, "
                                    f"which has {depth} layer(s)")
                block = blocks[position]
                name = block_op(block)
                expected = op_block(name, channels, width, stride if count == 0 else 1) if name else None
                if expected is None or block != expected:
                    detail = first_mismatch(f"blocks[{position}]", block, expected) if expected else (
                        f"blocks[{position}] ({block.to_string()}) is no fbnet op")
                    raise SpecError(f"fbnet: {detail} does not fit")
                vector.append(OPS.index(name))
                channels, count, position = width, count + 1, position + 1
            if count == 0 and not self._identity_first(s):
                found = "the blocks end" if position >= len(blocks) else (
                    f"blocks[{position}].out_channels={blocks[position].out_channels}")
                raise SpecError(f"fbnet: {found}, but stage{s + 1} must start there with {width} channels")
            vector += [SKIP] * (depth - count)
            channels = width
        if position != len(blocks):
            raise SpecError(f"fbnet: blocks[{position}] (out_channels={blocks[position].out_channels}) "
                            f"follows the last stage")
        return np.array(vector, dtype=np.int64)

    # -- counting and latency-table keys -----------------------------------------------------------
    def size(self) -> int:
        ops = len(OPS) - 1
        total = 1
        for _, depth, _ in STAGES:
            first = len(OPS)  # 8 ops + skip (absent or a 1x1 conv: one network either way)
            total *= first * sum(ops**d for d in range(depth))
        return total

    def candidate_ops(self) -> list[LayerShape]:
        size = conv_output_size(self.resolution, self.stem.stride)
        shapes = [LayerShape("stem", "stem", 3, self.resolution, STEM_CHANNELS, size, self.stem)]
        channels = STEM_CHANNELS
        for s, ((width, depth, _), stride) in enumerate(zip(STAGES, self.strides), 1):
            out = conv_output_size(size, stride)
            for j, (c_in, layer_stride, in_size) in enumerate(((channels, stride, size), (width, 1, out))):
                if j == 1 and depth == 1:
                    break
                for op in OPS:
                    block = op_block(op, c_in, width, layer_stride)
                    if block is not None:
                        shapes.append(LayerShape(f"stage{s}." + ("first" if j == 0 else "rest"), "block", c_in,
                                                 in_size, width, out, block))
            channels, size = width, out
        shapes.append(LayerShape("head", "head", channels, size, self.num_classes, 1, self.head))
        return shapes
