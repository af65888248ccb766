"""`nb201`: the NAS-Bench-201 cell space (Dong & Yang, ICLR 2020; = NATS-Bench's topology space).

One cell is searched and repeated everywhere. The cell is a DAG of 4 nodes: node 0 is the cell's
input, node j = sum over i < j of op(i -> j)(node i), node 3 is the output. Each of the 6 edges
picks one of 5 ops (NB201's names and order):

    none          the edge is absent (NB201: input times zero)
    skip_connect  identity
    nor_conv_1x1  ReLU - conv 1x1 (no bias) - BN (affine)
    nor_conv_3x3  ReLU - conv 3x3 (no bias) - BN (affine)
    avg_pool_3x3  3x3 average pool, stride 1, padding 1, border pixels averaged over valid inputs

So 6 decisions of 5 options, one per edge, in the order NB201's arch string lists them
(`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`, where `op~i` on node j's group is edge i -> j):
5^6 = 15,625 networks. Like NB201 we count cells with equal function (isomorphic cells, cells
with dead edges) as different networks: they differ in FLOPs, parameters and latency.

The network is NB201's fixed skeleton ("infer.tiny" in NATS-Bench), C = 16, N = 5:

    stem     conv 3x3 3 -> 16 (no bias) + BN, no activation
    stage 1  5 cells at 16 channels
             resblock 16 -> 32, stride 2 (ReLU-conv3x3/s2-BN, ReLU-conv3x3-BN; shortcut 2x2 avg pool
             stride 2 + conv 1x1 without BN; no activation after the sum)
    stage 2  5 cells at 32 channels
             resblock 32 -> 64, stride 2
    stage 3  5 cells at 64 channels
    head     BN + ReLU, global average pool, linear 64 -> classes

NB201 trains it on 32x32 CIFAR-10 / CIFAR-100 and on 16x16 ImageNet16-120 (120 classes); any
resolution divisible by 4 builds (the two pooled shortcuts need even sizes).

Cost, checked against the shared NB201 table (`nb201.csv`, NB201/NATS-Bench cost as its
ORIGIN.md describes) on all 15,625 cells x 3 data sets by `tests/test_nb201.py`:
- parameters: `predictors.cost.params_of_spec` (weights + BN scale and shift + the classifier's
  bias) x 1e-6 equals `params_{cifar10,cifar100,imagenet16}` exactly on 15,625 / 15,625 cells
  each, e.g. NB201 index 0: 129,306 = 0.129306 M.
- FLOPs: the table's `flops_*` (MFLOPs) are multiply-accumulates of conv and linear layers *with*
  bias adds: `macs_of_spec(spec, with_bias=True)`, exact on 15,625 / 15,625 cells each. Only the
  classifier has a bias (convs are bias-free before affine BN), so they are this project's MACs
  (biases excluded) + `num_classes`: index 0 has 15,647,360 MACs and 15.64737 MFLOPs. Without the
  bias adds no cell matches (off by exactly 10 / 100 / 120, i.e. 1e-5 / 1e-4 / 1.2e-4 MFLOPs).
  Pooling is not counted: neither the cell's 3x3 average pool nor the reduction shortcut's 2x2
  one (NB201 index 0 has an `avg_pool_3x3` edge and still matches); nor are BN and ReLU.
The table's extremes are NB201's published ranges, e.g. CIFAR-10 7.78305 - 220.11969 MFLOPs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from search_spaces.build import LayerShape, conv_output_size
from search_spaces.space import Decision, SearchSpace, first_mismatch
from search_spaces.spec import (
    CELL_EDGES,
    CELL_OPS,
    Activation,
    ArchSpec,
    BlockSpec,
    HeadSpec,
    Op,
    SpecError,
    StemSpec,
)

CHANNELS = (16, 32, 64)  # per stage: C, 2C, 4C with NB201's C = 16
CELLS_PER_STAGE = 5  # NB201's N
STEM = StemSpec(CHANNELS[0], kernel=3, stride=1, activation=Activation.NONE)
HEAD = HeadSpec(conv_channels=None, activation=Activation.RELU, dropout=0.0, preact=True)
EDGE_NAMES = tuple(f"edge{target}<-{source}" for source, target in CELL_EDGES)


def parse_arch_string(text: str) -> tuple[str, ...]:
    """NB201's `|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|...|` -> the 6 edge ops in
    `CELL_EDGES` order. Refuses anything that is not exactly that form."""
    if not isinstance(text, str):
        raise SpecError(f"nb201: arch string must be a string, got {type(text).__name__}")
    groups = text.strip().split("+")
    if len(groups) != 3:
        raise SpecError(f"nb201: arch string {text!r} must have 3 node groups joined by '+'")
    ops: list[str] = []
    for target, group in enumerate(groups, 1):
        if not (group.startswith("|") and group.endswith("|")):
            raise SpecError(f"nb201: arch string {text!r}: node {target} group {group!r} must be '|op~i|...|'")
        items = group[1:-1].split("|")
        if len(items) != target:
            raise SpecError(f"nb201: arch string {text!r}: node {target} must have {target} input(s), got {len(items)}")
        for source, item in enumerate(items):
            name, _, origin = item.partition("~")
            if origin != str(source):
                raise SpecError(f"nb201: arch string {text!r}: {item!r} must read '<op>~{source}'")
            if name not in CELL_OPS:
                raise SpecError(f"nb201: arch string {text!r}: op {name!r} not in {{{', '.join(CELL_OPS)}}}")
            ops.append(name)
    return tuple(ops)


def format_arch_string(edges: Sequence[str]) -> str:
    """The 6 edge ops -> NB201's canonical arch string."""
    groups = []
    for target in range(1, 4):
        items = [f"{op}~{source}" for (source, to), op in zip(CELL_EDGES, edges) if to == target]
        groups.append("|" + "|".join(items) + "|")
    return "+".join(groups)


def reaches_output(edges: Sequence[str]) -> bool:
    """Whether some path of non-`none` edges leads from the input (node 0) to the output (node 3).
    If none does, the cell's output, and so the network's, does not depend on the image: NB201
    reports 10 % CIFAR-10 accuracy (chance) for these 341 cells."""
    reached = {0}
    for (source, target), op in zip(CELL_EDGES, edges):  # edges are listed by target node
        if op != "none" and source in reached:
            reached.add(target)
    return 3 in reached


class NB201Space(SearchSpace):
    """The NAS-Bench-201 space: one decision per cell edge, options in `CELL_OPS` order, so a
    vector is NB201's op-index encoding of the cell."""

    name = "nb201"

    def __init__(self, resolution: int = 32, num_classes: int = 10) -> None:
        super().__init__(resolution, num_classes)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8 or resolution % 4:
            raise SpecError(f"nb201: resolution={resolution!r} must be a multiple of 4, at least 8 "
                            "(two stride-2 blocks with 2x2 pooled shortcuts)")
        self.decisions = [Decision(name, CELL_OPS) for name in EDGE_NAMES]

    # -- vector <-> architecture -------------------------------------------------------------------
    def decode(self, vector: Sequence[int]) -> ArchSpec:
        return self.spec_of_edges(tuple(CELL_OPS[i] for i in self.check_vector(vector)))

    def spec_of_edges(self, edges: Sequence[str]) -> ArchSpec:
        cell_edges = tuple(edges)
        blocks: list[BlockSpec] = []
        for stage, channels in enumerate(CHANNELS):
            if stage:
                blocks.append(BlockSpec(Op.RESBLOCK, channels, stride=2))
            blocks += [BlockSpec(Op.CELL, channels, edges=cell_edges)] * CELLS_PER_STAGE
        return ArchSpec(STEM, tuple(blocks), HEAD, self.resolution, self.num_classes,
                        name=f"{self.name}@{self.resolution}")

    def encode(self, arch: ArchSpec) -> np.ndarray:
        self._check_frame(arch, STEM, HEAD)
        cells = [block for block in arch.blocks if block.op is Op.CELL]
        edges = cells[0].edges if cells else ("none",) * len(CELL_EDGES)
        expected = self.spec_of_edges(edges)
        if len(arch.blocks) != len(expected.blocks):
            raise SpecError(f"nb201: {len(arch.blocks)} blocks, expected {len(expected.blocks)} "
                            f"(3 stages of {CELLS_PER_STAGE} cells, a resblock between stages)")
        for position, (block, want) in enumerate(zip(arch.blocks, expected.blocks)):
            if mismatch := first_mismatch(f"blocks[{position}]", block, want):
                raise SpecError(f"nb201: {mismatch} does not fit (every cell must be the same)")
        return np.array([CELL_OPS.index(op) for op in edges], dtype=np.int64)

    # -- NB201's arch strings ----------------------------------------------------------------------
    def from_arch_string(self, text: str) -> ArchSpec:
        return self.spec_of_edges(parse_arch_string(text))

    def arch_string(self, arch: ArchSpec) -> str:
        return format_arch_string([CELL_OPS[i] for i in self.encode(arch)])

    # -- latency-table keys ------------------------------------------------------------------------
    def candidate_ops(self) -> list[LayerShape]:
        """Stem, the two resblocks, the head, and every cell at each stage's shape: 3 x 15,625 cell
        entries. A per-layer table of this space is therefore large; NB201's measured latencies
        are per network (see the shared data) rather than per cell."""
        size = self.resolution
        shapes = [LayerShape("stem", "stem", 3, size, CHANNELS[0], size, STEM)]
        channels = CHANNELS[0]
        all_edges = list(itertools.product(CELL_OPS, repeat=len(CELL_EDGES)))
        for stage, width in enumerate(CHANNELS, 1):
            if stage > 1:
                out = conv_output_size(size, 2)
                shapes.append(LayerShape(f"stage{stage}.reduce", "block", channels, size, width, out,
                                         BlockSpec(Op.RESBLOCK, width, stride=2)))
                channels, size = width, out
            shapes += [LayerShape(f"stage{stage}.cell", "block", width, size, width, size,
                                  BlockSpec(Op.CELL, width, edges=edges)) for edges in all_edges]
        shapes.append(LayerShape("head", "head", channels, size, self.num_classes, 1, HEAD))
        return shapes
