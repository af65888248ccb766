"""The `mnasnet` space on an elastic supernet: every stage's op (mbconv, shuffle, ghost, dsconv
as separate shared paths), kernel, expansion, SE, layers and width; the opt-in `fire` op is not
covered (a space offering it is refused).

Elastic width (Cai et al., ICLR 2020, Sec. 3.2): a stage's output channels are the first w of
its widest, and every weight reading them (the next layers' inputs, the head's 1x1 conv) takes
its leading input slice, so a narrower network is a corner of the wide one. The stage's channel
order is the one training gives (not re-sorted), the same for every block reading it.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from nas.oneshot.elastic_layers import ElasticChoice
from nas.oneshot.elastic_mnasnet_ops import WidthDSConv, WidthGhost, WidthMBConv, WidthShuffle, path_family
from nas.oneshot.elastic_plan import ALL, ElasticAdapter, ElasticStage, is_free
from search_spaces.build import Head
from search_spaces.errors import OptionError
from search_spaces.spaces.mnasnet import FIELDS, OPS as MNAS_OPS, Choice, MnasNetSpace, Stage
from search_spaces.spec import Activation, ArchSpec, Op
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["ElasticHead", "MnasNetAdapter"]

COVERED_OPS = MNAS_OPS  # mbconv, shuffle, ghost, dsconv


class ElasticHead(Head):
    """The space's head (1x1 conv, pool, dropout, classifier) whose conv reads the leading
    `in_channels` of its widest input."""

    def __init__(self, arch: ArchSpec) -> None:
        super().__init__(arch.head, arch.blocks[-1].out_channels, arch.num_classes)
        if self.conv_classifier or arch.head.preact or not arch.head.conv_channels:
            raise SupernetPlanError("elastic width needs a head of 1x1 conv, pool and classifier")

    def forward(self, x: Tensor) -> Tensor:
        conv, norm, act = self.conv
        x = act(norm(F.conv2d(x, conv.weight[:, :x.shape[1]]))).mean((2, 3))
        return self.classifier(self.dropout(self.hidden(x)))

    def extract(self, prefix: str, in_channels: int) -> dict[str, Tensor]:
        out = {prefix + k: v.detach().clone() for k, v in self.state_dict().items()}
        out[prefix + "conv.0.weight"] = self.conv[0].weight[:, :in_channels].detach().clone()
        return out


class MnasNetAdapter(ElasticAdapter):
    """Each mnasnet stage is up to max(layers) positions; a network runs the first `layers` of
    them, all with the stage's block (a Ghost block's later layers carry kernel 3, as the space
    builds them). Progressive shrinking frees kernel, depth, then expansion together with SE and
    the op type, then width."""

    dimensions = ("kernel", "depth", "expand", "width")

    def __init__(self, space: MnasNetSpace) -> None:
        super().__init__(space)
        self.space: MnasNetSpace = space
        uncovered = sorted({op.value for stage in space.stages for op in stage.ops} - {op.value for op in COVERED_OPS})
        if uncovered:
            raise SupernetPlanError(f"elastic supernet over mnasnet: ops {uncovered} not covered; use ops among "
                                    f"{{{', '.join(op.value for op in COVERED_OPS)}}}")
        stages, channels = [], space.stem.out_channels
        for stage in space.stages:
            stages.append(ElasticStage(f"stage{stage.index}", channels, max(stage.widths), stage.stride,
                                       min(stage.layers), max(stage.layers), stage.kernels, stage.expand_ratios,
                                       Activation.RELU))
            channels = max(stage.widths)
        self.stages = tuple(stages)
        self.mnas_stages = {s.name: stage for s, stage in zip(self.stages, space.stages)}
        self._allowed: dict[tuple[int, frozenset[str] | None], list[Choice]] = {}

    # -- which networks -----------------------------------------------------------------------------
    def layers_of(self, arch: ArchSpec) -> list[list]:
        self.covers(arch)
        vector, out, position = self.space.encode(arch), [], 0
        for i, stage in enumerate(self.space.stages):
            count = stage.layers[int(vector[i * len(FIELDS) + FIELDS.index("layers")])]
            out.append(list(arch.blocks[position:position + count]))
            position += count
        return out

    @staticmethod
    def _main_op(stage: Stage) -> int:
        return stage.ops.index(Op.MBCONV) if Op.MBCONV in stage.ops else 0

    def _free(self, stage: Stage, elastic: frozenset[str] | None) -> list[tuple[int, ...]]:
        """Per field (FIELDS order) the option indices free under `elastic` (others: the largest)."""
        def indices(field: str, dimension: str) -> tuple[int, ...]:
            options = stage.options(field)
            return tuple(range(len(options))) if is_free(dimension, elastic) else (options.index(max(options)),)

        ops = tuple(range(len(stage.ops))) if is_free("expand", elastic) else (self._main_op(stage),)
        return [ops, indices("kernel", "kernel"), indices("expand_ratio", "expand"), indices("se_ratio", "expand"),
                indices("layers", "depth"), indices("width", "width")]

    def _allowed_choices(self, index: int, elastic: frozenset[str] | None) -> list[Choice]:
        """The distinct (canonical) choices of stage `index` free under `elastic` (memoised)."""
        key = (index, elastic)
        if key not in self._allowed:
            stage = self.space.stages[index]
            seen: dict[Choice, None] = {}
            for values in itertools.product(*self._free(stage, elastic)):
                seen.setdefault(self.space._canonical_choice(stage, Choice(*values)))
            self._allowed[key] = list(seen)
        return self._allowed[key]

    def _decode(self, choices: list[Choice]) -> ArchSpec:
        return self.space.decode([index for choice in choices for index in choice])

    def largest(self) -> ArchSpec:
        return self._decode([Choice(*(field[0] for field in self._free(stage, frozenset())))
                             for stage in self.space.stages])

    def smallest(self, elastic: frozenset[str] | None = ALL) -> ArchSpec:
        """The largest's op type at the smallest free kernel, expansion, SE, depth and width."""
        choices = []
        for stage in self.space.stages:
            free = self._free(stage, elastic)
            values = [self._main_op(stage)] + [min(field, key=lambda i, f=f: stage.options(f)[i])
                                               for field, f in zip(free[1:], FIELDS[1:])]
            choices.append(self.space._canonical_choice(stage, Choice(*values)))
        return self._decode(choices)

    def sample(self, rng: np.random.Generator, by: str = "network", elastic: frozenset[str] | None = ALL) -> ArchSpec:
        """`by="network"`: uniform over the space's networks (per stage its distinct blocks, layer
        counts and widths are independent); `by="choice"`: each field uniform (a dsconv stage,
        which ignores expansion and SE, is then drawn as often as an mbconv one)."""
        if by not in ("network", "choice"):
            raise OptionError(f"sampling={by!r} not in {{network, choice}}")
        choices = []
        for index, stage in enumerate(self.space.stages):
            if by == "network":
                allowed = self._allowed_choices(index, elastic)
                choices.append(allowed[int(rng.integers(len(allowed)))])
            else:
                free = self._free(stage, elastic)
                choices.append(Choice(*(field[int(rng.integers(len(field)))] for field in free)))
        return self._decode(choices)

    # -- modules ------------------------------------------------------------------------------------
    def position(self, stage: ElasticStage, j: int) -> nn.Module:
        mnas = self.mnas_stages[stage.name]
        in_max, stride = (stage.in_channels, stage.stride) if j == 0 else (stage.out_channels, 1)
        args = (in_max, stage.out_channels, stride, stage.kernels)
        expand_max, se_max = max(mnas.expand_ratios), max(mnas.se_ratios)
        paths: dict[str, nn.Module] = {}
        if Op.MBCONV in mnas.ops:
            if expand_max > 1:
                paths["mbconv"] = WidthMBConv(*args, expand_max, se_max, stage.activation, expanding=True)
            if 1.0 in mnas.expand_ratios:
                paths["mbconv_e1"] = WidthMBConv(*args, 1.0, se_max, stage.activation, expanding=False)
        if Op.SHUFFLE in mnas.ops:
            paths["shuffle"] = WidthShuffle(*args, expand_max, se_max, stage.activation)
        if Op.GHOST in mnas.ops:
            paths["ghost"] = WidthGhost(*args, expand_max, se_max, stage.activation)
        if Op.DSCONV in mnas.ops:
            paths["dsconv"] = WidthDSConv(*args, stage.activation)
        return ElasticChoice(paths, path_family)

    def head(self, reference: ArchSpec) -> nn.Module:
        return ElasticHead(reference)
