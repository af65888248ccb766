"""`mnasnet`: MnasNet's factorized hierarchical space (Tan et al., CVPR 2019, section 4.1, Fig. 4).

The network is a fixed sequence of 7 stages over a base model; each stage searches its own
block and repeats it, so layers differ between stages but not within one. Section 4.1 takes
MobileNetV2 as the reference: the layers of each block are searched as {-1, 0, +1} relative to
MobileNetV2's, and the filter sizes as {0.75, 1.0, 1.25} times MobileNetV2's. So the default
base is MobileNetV2's (Sandler et al. 2018, Table 2): widths 16, 24,
32, 64, 96, 160, 320; layers 1, 2, 3, 4, 3, 3, 1; strides 1, 2, 2, 2, 1, 2, 1; stem 3x3 conv 32
s2; head 1x1 conv 1280, pool, dropout 0.2, classifier. `base="mnasnet_a1"` (the searched model's
stages: 16, 24, 40, 80, 112, 160, 320 x 1, 2, 3, 4, 2, 3, 1) and `base="efficientnet_b0"` (16, 24,
40, 80, 112, 192, 320 x 1, 2, 2, 3, 3, 4, 1) centre the space elsewhere.

Per stage (this project's op set replaces the paper's conv/dconv/MBConv and skip ops; the
identity shortcut follows the shapes): op {mbconv, shuffle, ghost, dsconv}, kernel {3, 5, 7},
expansion {1, 3, 4, 6}, SE {0, 0.25} (EfficientNet-style SE), layers base + {-1, 0, +1} (at least
1), width base x {0.75, 1.0, 1.25} rounded by `make_divisible(., 8)`. ReLU throughout. The first
layer of a stage carries its stride. Decisions whose options coincide are listed once (MobileNetV2's
16-wide stage gives widths {16, 24}; a 1-layer stage gives layers {1, 2}).

At 64 px or less (CIFAR-10, digits) the stem and the first stride-2 stage keep stride 1, as the
CIFAR variants of MobileNetV2 do (`small_input_strides`): 32 px ends in a 4x4 map, not 1x1.

Rules that give each network one canonical vector and one spec (so one latency-table key per
module, and `size()` counts networks exactly):
- every stage starts by halving the resolution or by changing the width, as in MobileNetV2, so
  stage boundaries can be read off the network. Where a stride-1 stage could have the width of the
  stage before it (e.g. 24 after 24 at 32 px, or EfficientNet-B0's 240 after 240), that width is
  dropped from the earlier stage (the later stage keeps its base width).
- `dsconv` has no expansion and no SE: its stage's expansion and SE decisions are ignored
  (canonical index 0).
- `fire` (SqueezeNet's fire module, Iandola et al. 2016) is opt-in (`ops=[..., "fire"]`), not in
  the default op set, so the default space's vectors, size and tables are unchanged. Its squeeze
  is fixed at 1/8 of the block's input (SqueezeNet's fire5-fire9 ratio), its expansion and SE
  decisions are ignored as dsconv's, and its kernel is the expand kxk. A strided fire module
  max-pools in ceil mode, which matches the stage sizes only on even maps, so a space with fire
  refuses a stride-2 stage on an odd input size.
- a Ghost bottleneck uses its kernel only when strided or when its shortcut changes width, i.e.
  in the first layer of its stage; the stage's other layers carry kernel 3.
- a ShuffleNetV2 unit changes width only in its stride-2 form, so `shuffle` is offered only in
  stages whose first layer has stride 2, as in ShuffleNetV2 itself.
So `size()` is a product over stages of (distinct block choices) x layers x widths.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from search_spaces.blocks import make_divisible
from search_spaces.build import LayerShape, conv_output_size
from search_spaces.space import Decision, SearchSpace, first_mismatch, option_label, small_input_strides
from search_spaces.spec import Activation, ArchSpec, BlockSpec, HeadSpec, Op, SEStyle, SpecError, StemSpec
from search_spaces.supernet_plan import Slot, SupernetPlan, SupernetPlanError

logger = logging.getLogger(__name__)

# (width, layers, stride at 224 px) per stage
BASES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "mobilenetv2": ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)),
    "mnasnet_a1": ((16, 1, 1), (24, 2, 2), (40, 3, 2), (80, 4, 2), (112, 2, 1), (160, 3, 2), (320, 1, 1)),
    "efficientnet_b0": ((16, 1, 1), (24, 2, 2), (40, 2, 2), (80, 3, 2), (112, 3, 1), (192, 4, 2), (320, 1, 1)),
}
OPS = (Op.MBCONV, Op.SHUFFLE, Op.GHOST, Op.DSCONV)
OPT_IN_OPS = (Op.FIRE,)  # offered only when `ops` names them
FIRE_SQUEEZE = 0.125  # squeeze width / input width of a fire module
KERNELS = (3, 5, 7)
EXPAND_RATIOS = (1.0, 3.0, 4.0, 6.0)
SE_RATIOS = (0.0, 0.25)
LAYER_DELTAS = (-1, 0, 1)
WIDTH_MULTIPLIERS = (0.75, 1.0, 1.25)
UNUSED_KERNEL = 3  # what a Ghost block whose kernel builds nothing carries
FIELDS = ("op", "kernel", "expand_ratio", "se_ratio", "layers", "width")


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage's fixed facts and its options (the decisions `stage<i>.<field>`)."""

    index: int  # 1-based, as in error messages
    stride: int
    in_size: int
    out_size: int
    ops: tuple[Op, ...]
    kernels: tuple[int, ...]
    expand_ratios: tuple[float, ...]
    se_ratios: tuple[float, ...]
    layers: tuple[int, ...]  # ascending
    widths: tuple[int, ...]

    def options(self, field: str) -> tuple:
        return getattr(self, "layers" if field == "layers" else "widths" if field == "width" else field + "s")


class Choice(NamedTuple):
    """One stage's decisions, each an index into the stage's options (field order = FIELDS)."""

    op: int
    kernel: int
    expand_ratio: int
    se_ratio: int
    layers: int
    width: int


class MnasNetSpace(SearchSpace):
    """The MnasNet space; options narrow or re-centre it (tests use tiny ones, users may too)."""

    name = "mnasnet"

    def __init__(
        self,
        resolution: int = 224,
        num_classes: int = 1000,
        base: str | Sequence[tuple[int, int, int]] = "mobilenetv2",
        width_mult: float = 1.0,
        ops: Sequence[Op | str] = OPS,
        kernels: Sequence[int] = KERNELS,
        expand_ratios: Sequence[float] = EXPAND_RATIOS,
        se_ratios: Sequence[float] = SE_RATIOS,
        layer_deltas: Sequence[int] = LAYER_DELTAS,
        width_multipliers: Sequence[float] = WIDTH_MULTIPLIERS,
    ) -> None:
        super().__init__(resolution, num_classes)
        if isinstance(base, str) and base not in BASES:
            raise SpecError(f"mnasnet: base={base!r} not in {{{', '.join(BASES)}}}")
        # the layer ops only: NB201's cell and resblock, FBNet's irf/pw and
        # ShuffleNet V1 units belong to other spaces
        known_ops = [op.value for op in OPS + OPT_IN_OPS]
        unknown_ops = [op for op in ops if (op.value if isinstance(op, Op) else op) not in known_ops]
        if unknown_ops:
            raise SpecError(f"mnasnet: ops {unknown_ops} not in {{{', '.join(known_ops)}}}")
        stages = BASES[base] if isinstance(base, str) else tuple(tuple(stage) for stage in base)
        stem_stride, strides = small_input_strides(resolution, 2, [stride for _, _, stride in stages])
        self.stem = StemSpec(make_divisible(32 * width_mult, 8), 3, stem_stride, Activation.RELU)
        head = 1280 if width_mult <= 1 else make_divisible(1280 * width_mult, 8)
        self.head = HeadSpec(conv_channels=head, activation=Activation.RELU, dropout=0.2)
        widths = [_unique(make_divisible(w * width_mult * m, 8) for m in width_multipliers) for w, _, _ in stages]
        widths = _visible_boundaries(widths, strides, self.stem.out_channels)
        size = conv_output_size(resolution, stem_stride)
        self.stages: list[Stage] = []
        for index, ((_, layers, _), stride, stage_widths) in enumerate(zip(stages, strides, widths), 1):
            stage_ops = tuple(Op(op) for op in ops if Op(op) is not Op.SHUFFLE or stride == 2)
            self.stages.append(Stage(index, stride, size, conv_output_size(size, stride), stage_ops,
                                     tuple(kernels), tuple(float(e) for e in expand_ratios),
                                     tuple(float(r) for r in se_ratios),
                                     tuple(sorted(_unique(max(1, layers + d) for d in layer_deltas))), stage_widths))
            size = conv_output_size(size, stride)
        if Op.FIRE in (Op(op) for op in ops):
            for stage in self.stages:
                if stage.stride == 2 and stage.in_size % 2:
                    raise SpecError(f"mnasnet: op 'fire' at resolution {resolution}: stage{stage.index} strides an "
                                    f"odd {stage.in_size}x{stage.in_size} map, where a fire module's ceil-mode "
                                    "max-pool and the other ops' strided convs disagree; use an even-sized chain")
        self.decisions = [Decision(f"stage{stage.index}.{field}", stage.options(field))
                          for stage in self.stages for field in FIELDS]

    # -- one stage ---------------------------------------------------------------------------------
    def _canonical_choice(self, stage: Stage, choice: Choice) -> Choice:
        plain = stage.ops[choice.op] in (Op.DSCONV, Op.FIRE)
        return choice._replace(expand_ratio=0, se_ratio=0) if plain else choice

    def _block(self, stage: Stage, choice: Choice, first: bool) -> BlockSpec:
        op = stage.ops[choice.op]
        kernel = stage.kernels[choice.kernel] if first or op is not Op.GHOST else UNUSED_KERNEL
        expand, se = ((1.0, 0.0) if op is Op.DSCONV else (FIRE_SQUEEZE, 0.0) if op is Op.FIRE
                      else (stage.expand_ratios[choice.expand_ratio], stage.se_ratios[choice.se_ratio]))
        return BlockSpec(op, stage.widths[choice.width], stage.stride if first else 1, kernel, expand, se_ratio=se,
                         se_style=SEStyle.EFFICIENTNET, activation=Activation.RELU)

    def _stage_blocks(self, stage: Stage, choice: Choice) -> list[BlockSpec]:
        return [self._block(stage, choice, True)] + [self._block(stage, choice, False)] * (stage.layers[choice.layers] - 1)

    # -- vector <-> architecture -------------------------------------------------------------------
    def _choices(self, vector: Sequence[int]) -> list[Choice]:
        v, n = self.check_vector(vector), len(FIELDS)
        return [Choice(*v[i * n:(i + 1) * n]) for i in range(len(self.stages))]

    def decode(self, vector: Sequence[int]) -> ArchSpec:
        blocks = [block for stage, choice in zip(self.stages, self._choices(vector))
                  for block in self._stage_blocks(stage, choice)]
        return ArchSpec(self.stem, tuple(blocks), self.head, self.resolution, self.num_classes,
                        name=f"{self.name}@{self.resolution}")

    def canonical(self, vector: Sequence[int]) -> list[int]:
        return [index for stage, choice in zip(self.stages, self._choices(vector))
                for index in self._canonical_choice(stage, choice)]

    def encode(self, arch: ArchSpec) -> np.ndarray:
        """Stage by stage: its first block gives the choices, then every block equal to the
        stage's repeated block belongs to it (the next stage's first block never is: it has
        stride 2 or another width)."""
        self._check_frame(arch, self.stem, self.head)
        blocks, position, vector = arch.blocks, 0, []
        for stage in self.stages:
            if position >= len(blocks):
                raise SpecError(f"mnasnet: the blocks end at blocks[{position - 1}]; stage{stage.index} has none")
            choice = self._read_first(stage, blocks[position], position)
            self._match(blocks[position], self._block(stage, choice, True), position, stage)
            repeated, count = self._block(stage, choice, False), 1
            while position + count < len(blocks) and blocks[position + count] == repeated:
                count += 1
            following = blocks[position + count] if position + count < len(blocks) else None
            if following is not None and (following.stride, following.out_channels) == (1, repeated.out_channels):
                # the next stage starts with a stride or a new width, so this block is inside the stage
                self._match(following, repeated, position + count, stage)
            if count not in stage.layers:
                where = f"blocks[{position}:{position + count}]"
                raise SpecError(f"mnasnet: {where} gives stage{stage.index} {count} layer(s), "
                                f"not in {{{', '.join(map(str, stage.layers))}}}")
            vector += choice._replace(layers=stage.layers.index(count))
            position += count
        if position != len(blocks):
            # the block after the last stage, or one that differs from its stage's repeated block
            raise SpecError(f"mnasnet: blocks[{position}] ({blocks[position].to_string()}) fits no stage: "
                            f"the last stage ends at blocks[{position - 1}]")
        return np.array(vector, dtype=np.int64)

    def _read_first(self, stage: Stage, block: BlockSpec, position: int) -> Choice:
        path = f"blocks[{position}]"

        def index(field: str, value: object, options: tuple) -> int:
            if value not in options:
                shown = ", ".join(option_label(o) for o in options)
                raise SpecError(f"mnasnet: {path}.{field}={option_label(value)} not in {{{shown}}} "
                                f"(stage{stage.index})")
            return options.index(value)

        op = index("op", block.op, stage.ops)
        width = index("out_channels", block.out_channels, stage.widths)
        kernel = index("kernel", block.kernel, stage.kernels)
        plain = block.op in (Op.DSCONV, Op.FIRE)  # their expansion (a fire's squeeze) is fixed
        expand = 0 if plain else index("expand_ratio", block.expand_ratio, stage.expand_ratios)
        se = 0 if plain else index("se_ratio", block.se_ratio, stage.se_ratios)
        return Choice(op, kernel, expand, se, 0, width)

    def _match(self, block: BlockSpec, expected: BlockSpec, position: int, stage: Stage) -> None:
        if mismatch := first_mismatch(f"blocks[{position}]", block, expected):
            raise SpecError(f"mnasnet: {mismatch} does not fit stage{stage.index}")

    # -- counting and latency-table keys -----------------------------------------------------------
    def _stage_choices(self, stage: Stage) -> Iterator[Choice]:
        """The distinct canonical (op, kernel, expansion, SE, -, width) choices of one stage."""
        seen: set[Choice] = set()
        for op, kernel, expand, se, width in itertools.product(
            *(range(len(stage.options(field))) for field in ("op", "kernel", "expand_ratio", "se_ratio", "width"))
        ):
            choice = self._canonical_choice(stage, Choice(op, kernel, expand, se, 0, width))
            if choice not in seen:
                seen.add(choice)
                yield choice

    def size(self) -> int:
        return math.prod(len(list(self._stage_choices(stage))) * len(stage.layers) for stage in self.stages)

    def candidate_ops(self) -> list[LayerShape]:
        """Each stage's first block for every input width the stage before can have, and its
        repeated block when it can have more than one layer; stem and head."""
        stem = LayerShape("stem", "stem", 3, self.resolution, self.stem.out_channels, self.stages[0].in_size, self.stem)
        found: dict[str, LayerShape] = {stem.signature: stem}
        in_widths: tuple[int, ...] = (self.stem.out_channels,)
        for stage in self.stages:
            for choice in self._stage_choices(stage):
                width = stage.widths[choice.width]
                shapes = [LayerShape(f"stage{stage.index}.first", "block", in_width, stage.in_size, width,
                                     stage.out_size, self._block(stage, choice, True)) for in_width in in_widths]
                if stage.layers[-1] > 1:
                    shapes.append(LayerShape(f"stage{stage.index}.rest", "block", width, stage.out_size, width,
                                             stage.out_size, self._block(stage, choice, False)))
                for shape in shapes:
                    found.setdefault(shape.signature, shape)
            in_widths = stage.widths
        final = self.stages[-1]
        for width in final.widths:
            head = LayerShape("head", "head", width, final.out_size, self.num_classes, 1, self.head)
            found.setdefault(head.signature, head)
        return list(found.values())

    # -- one-shot supernet -------------------------------------------------------------------------
    def supernet_plan(self, *, se_index: int = 0, layers_index: int | None = None,
                      width_index: int | None = None) -> SupernetPlan:
        """One slot per stage over its (kernel, expansion) pairs of MBConv, shared by the stage's
        layers. Fixed per stage: op = mbconv, SE = option `se_index`, layers and width = option
        `layers_index` / `width_index` (default: the middle of the options, rounded down, which is
        the base network's value for the default deltas {-1, 0, +1} and multipliers {0.75, 1.0,
        1.25}). A supernet over op, SE, layers or width would mix networks of different shapes."""
        fields = {name: i for i, name in enumerate(FIELDS)}
        slots, base, positions, position = [], [], [], 0
        for s, stage in enumerate(self.stages):
            if Op.MBCONV not in stage.ops:
                raise SupernetPlanError(f"stage{stage.index} offers no mbconv (ops {[o.value for o in stage.ops]})")
            fixed = {"op": stage.ops.index(Op.MBCONV), "kernel": 0, "expand_ratio": 0, "se_ratio": se_index,
                     "layers": (len(stage.layers) - 1) // 2 if layers_index is None else layers_index,
                     "width": (len(stage.widths) - 1) // 2 if width_index is None else width_index}
            for name in ("se_ratio", "layers", "width"):
                if not 0 <= fixed[name] < len(stage.options(name)):
                    raise SupernetPlanError(f"stage{stage.index}.{name} index {fixed[name]} not in "
                                            f"0..{len(stage.options(name)) - 1}")
            offset = s * len(FIELDS)
            base += [fixed[name] for name in FIELDS]
            pairs = list(itertools.product(range(len(stage.kernels)), range(len(stage.expand_ratios))))
            labels = tuple(f"k{stage.kernels[k]}_e{stage.expand_ratios[e]:g}" for k, e in pairs)
            assignments = tuple(((offset + fields["kernel"], k), (offset + fields["expand_ratio"], e)) for k, e in pairs)
            slots.append(Slot(f"stage{stage.index}", labels, assignments))
            count = stage.layers[fixed["layers"]]
            positions.append(tuple(range(position, position + count)))
            position += count
        return SupernetPlan(tuple(slots), tuple(base), tuple(positions))


def _unique(values: Iterable[Any]) -> tuple[Any, ...]:
    """Distinct values in first-seen order (coinciding options are offered once)."""
    return tuple(dict.fromkeys(values))


def _visible_boundaries(widths: list[tuple[int, ...]], strides: list[int], stem_width: int) -> list[tuple[int, ...]]:
    """Drop widths that would let a stride-1 stage keep its input width: from the stage before it
    (the stem's width is fixed, so from the stage itself when it is the first)."""
    widths = list(widths)
    for i in range(len(widths) - 1, -1, -1):
        if strides[i] != 1:
            continue
        target, taken = (0, (stem_width,)) if i == 0 else (i - 1, widths[i])
        dropped = [w for w in widths[target] if w in taken]
        if dropped:
            logger.debug("mnasnet: stage%d drops width(s) %s: stride-1 stage%d could start at that width",
                         target + 1, dropped, i + 1)
            widths[target] = tuple(w for w in widths[target] if w not in taken)
    for i, options in enumerate(widths):
        if not options:
            raise SpecError(f"mnasnet: stage{i + 1} has no width left that differs from the next stride-1 stage's "
                            "(every stage must start with a stride or a width change); widen the multipliers")
    return widths
