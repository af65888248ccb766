"""Where channels can be removed from an `ArchSpec`, and how removing them edits a state dict.

A *unit* is one tensor whose channels can be dropped together with every weight that reads or
writes them, leaving a smaller dense network that an `ArchSpec` still describes exactly.
Two kinds, named like the policy keys:

- ``blocks.i`` (*inner*): the expanded tensor inside a block, which nothing outside the block
  sees, so it is free of residual ties. In the pruned spec it is `BlockSpec.mid_channels`.
  * MBConv with an expand conv: expand conv out + BN, depthwise + BN, SE reduce in / expand out,
    project conv in. An MBConv without expand conv (mid == input width) has no inner unit: its
    inner tensor *is* its input, pruned with the unit that writes that input.
  * Ghost bottleneck: the expand Ghost module's output (see pairs below), the strided depthwise,
    SE, and the project Ghost module's primary conv input.
  * ShuffleNetV2 unit: branch 2's 1x1 out + BN, depthwise + BN, SE, and its last 1x1's input.
  * FBNet's `irf` block: as MBConv (its expand conv is always there).
  * ShuffleNet V1 unit: its first 1x1 out + BN, depthwise + BN, and its last 1x1's input.
  * With a channel shuffle between a grouped expand and the depthwise conv (`irf`/`mbconv` with
    `groups` > 1, ShuffleNet V1), channels go by cells and indices map through the shuffle
    (`compress.prune_grouped`).
  * DSConv and `pw` have no inner tensor (their only width is their output).
- ``stem`` / ``blocks.i.out`` (*output*): a tensor between blocks. Residual adds tie tensors:
  block k with an identity shortcut adds its input to its output, so t_k and t_k+1 must keep the
  same channels. We handle residual-tied outputs by pruning the whole *group* at once: the
  maximal run of tensors joined by identity adds, named after the block that writes its first
  tensor (``stem`` or ``blocks.p.out``). Its channels are chosen once for the group, from the sum
  of the scores of every layer that writes into it (the producer plus each residual member's
  project layer: the channel is their sum), and removed from every writer and reader. The other
  ``blocks.k.out`` names in a group are refused with a pointer to the group's name.
  A stride-1 ShuffleNet V1 unit adds its input to its output, so it joins a group like a residual
  block. Grouped convs reading or writing a group split it into equal blocks: its channels go by
  cells (`compress.prune_grouped`).
  Not supported (refused with a reason): groups written by a ShuffleNetV2 unit (concat + channel
  shuffle interleaves the two branches) or split by a stride-1 ShuffleNetV2 unit; groups written
  by a stride-2 ShuffleNet V1 unit or read by one (its output concatenates its avg-pooled input
  with its conv branch, so the input group's channels reappear inside the output group, where
  other grouped convs cut them at other block boundaries: the widths of the whole chain of such
  groups would have to be chosen together, which is not implemented); groups mixing Ghost pairs
  with grouped convs.
- Refused outright (`PolicyError` naming the layer): SqueezeNet's parts, a fire module (its output
  concatenates two expand convs and no layer of it has a batch norm), a stem without batch norm
  and a conv classifier head, for which no unit or state-dict edit is written.

Ghost modules compute ``cat(primary, cheap(primary))[:out]`` with ``P = ceil(out / 2)`` primary
channels, so output channels j and P + j are one filter and its cheap copy, removed as a pair
(a cheap channel cannot outlive its primary, and the builder lays them out as ``[kept primaries,
their cheap copies]``, which is the sorted order of the kept pairs). A pruned width is therefore
even. When ``out`` is odd, the last primary has no cheap channel in the output; it cannot form a
pair, so it is kept only when the whole unit is (ratio 0). Scores of a pair are summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from compress.policy import PolicyError
from compress.prune_grouped import grouped_conv_in, shuffled_index
from search_spaces.blocks import se_squeeze_channels
from search_spaces.spec import ArchSpec, BlockSpec, Op

StateDict = dict[str, Tensor]

INNER, OUTPUT = "inner", "output"


@dataclass(frozen=True, slots=True)
class Writer:
    """A conv + BN (a `ConvBNAct` at `prefix`: `.0` conv, `.1` BN) whose output channel j is
    channel `offset + j` of the unit's tensor, for the first `count` of its channels."""

    prefix: str
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Unit:
    """One prunable tensor. For an output group, `block` is the producer (-1 = stem), `members`
    the residual blocks adding into it and `consumer` the block reading it last (None = head)."""

    name: str
    kind: str
    width: int
    writers: tuple[Writer, ...]
    ghost_primary: int | None
    block: int
    members: tuple[int, ...] = ()
    consumer: int | None = None
    partitions: tuple[int, ...] = ()  # group counts of the grouped convs reading/writing it
    shuffle: int = 1  # inner tensor: groups of the channel shuffle after the expand conv

    def channel_groups(self, paired_only: bool = False) -> list[list[int]]:
        """Channels that stay or go together: singletons, or Ghost pairs [j, P + j]."""
        if self.ghost_primary is None:
            return [[channel] for channel in range(self.width)]
        primary = self.ghost_primary
        groups = [[j, primary + j] if primary + j < self.width else [j] for j in range(primary)]
        return [group for group in groups if len(group) == 2] if paired_only else groups


def block_inputs(spec: ArchSpec) -> list[int]:
    widths = [spec.stem.out_channels] + [block.out_channels for block in spec.blocks]
    return widths[:-1]


def has_expand(block: BlockSpec, in_channels: int) -> bool:
    """MBConv builds its expand conv only when the inner width differs from the input."""
    return block.op is not Op.MBCONV or block.mid(in_channels) != in_channels


def reader_groups(block: BlockSpec, in_channels: int) -> int:
    """Groups of the conv that reads a block's input (1 = dense)."""
    if block.op in (Op.MBCONV, Op.IRF):
        return block.groups  # the expand conv, or without it the project conv
    if block.op is Op.SHUFFLE_V1:  # the builder keeps the first 1x1 dense on a narrow input
        return 1 if in_channels < block.mid(in_channels) else block.groups
    return 1


def writer_groups(block: BlockSpec) -> int:
    """Groups of the conv that writes a block's output (1 = dense)."""
    return block.groups if block.op in (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1) else 1


def structure(block: BlockSpec, in_channels: int) -> tuple[bool, bool, int]:
    """What the builder decides from the widths: shortcut, expand conv, groups of the first conv."""
    return block.has_residual(in_channels), has_expand(block, in_channels), reader_groups(block, in_channels)


def _ghost_writers(prefix: str, width: int) -> tuple[list[Writer], int]:
    primary = math.ceil(width / 2)
    return [Writer(f"{prefix}.primary", 0, primary), Writer(f"{prefix}.cheap", primary, width - primary)], primary


def _output_writers(spec: ArchSpec, index: int) -> tuple[list[Writer], int | None]:
    """Layers writing block `index`'s output (-1: the stem), and the Ghost primary count."""
    if index < 0:
        return [Writer("stem.0", 0, spec.stem.out_channels)], None
    block, prefix = spec.blocks[index], f"blocks.{index}"
    if block.op in (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1):  # V1: stride 1 only (stride 2 is refused)
        return [Writer(f"{prefix}.project", 0, block.out_channels)], None
    if block.op is Op.DSCONV:
        return [Writer(f"{prefix}.1", 0, block.out_channels)], None
    if block.op is Op.PW:
        return [Writer(prefix, 0, block.out_channels)], None
    writers, primary = _ghost_writers(f"{prefix}.project", block.out_channels)
    if not block.has_residual(block_inputs(spec)[index]):
        # the shortcut's 1x1 adds into the same channels as the project module
        writers.append(Writer(f"{prefix}.shortcut.1", 0, block.out_channels))
    return writers, primary


def _ties(block: BlockSpec, in_channels: int) -> bool:
    return block.has_residual(in_channels) or (block.op in (Op.SHUFFLE, Op.SHUFFLE_V1) and block.stride == 1)


def _group_problem(spec: ArchSpec, producer: int, members: tuple[int, ...], consumer: int | None) -> str | None:
    """Why the output group with these blocks cannot be pruned, or None."""
    blocks = spec.blocks
    for member in members:
        if blocks[member].op is Op.SHUFFLE:
            return (f"is split in half and shuffled by the stride-1 ShuffleNetV2 unit blocks.{member}; "
                    "pruning it is not supported")
    if producer >= 0 and blocks[producer].op is Op.SHUFFLE:
        return "is written by a ShuffleNetV2 unit (concat + channel shuffle); pruning it is not supported"
    if producer >= 0 and blocks[producer].op is Op.SHUFFLE_V1:
        return (f"is the concat of the avg-pooled input and the conv branch of the stride-2 ShuffleNet V1 unit "
                f"blocks.{producer}; pruning it is not supported (the input's channels sit inside it, across "
                "the blocks of the grouped convs reading it)")
    if consumer is not None and blocks[consumer].op is Op.SHUFFLE_V1:
        return (f"is avg-pooled into the output of the stride-2 ShuffleNet V1 unit blocks.{consumer} (concat), "
                "which ties its channels to that output's; pruning it is not supported")
    return None


def refuse_unsupported(spec: ArchSpec) -> None:
    """Channel pruning has no rule for these parts; refuse before any policy is read."""
    for index, block in enumerate(spec.blocks):
        if block.op is Op.FIRE:
            raise PolicyError(f"prune: blocks.{index} ({block.to_string()}) is a fire module; channel pruning does "
                              "not support op 'fire' (SqueezeNet's concatenated expand convs without batch norm)")
    if not spec.stem.batch_norm:
        raise PolicyError("prune: stem.batch_norm=false is not supported (pruning scores and slices conv + BN)")
    if spec.head.classifier != "linear":
        raise PolicyError(f"prune: head.classifier={spec.head.classifier!r} is not supported (only 'linear')")


def analyse(spec: ArchSpec) -> tuple[dict[str, Unit], dict[str, str]]:
    """(prunable units by name, reason by name for every other name a policy could use)."""
    refuse_unsupported(spec)
    units: dict[str, Unit] = {}
    reasons: dict[str, str] = {}
    ins = block_inputs(spec)
    count = len(spec.blocks)
    # inner units
    for index, block in enumerate(spec.blocks):
        name, prefix, mid = f"blocks.{index}", f"blocks.{index}", 0
        if block.op in (Op.DSCONV, Op.PW):
            reasons[name] = f"({block.op.value}) has no inner width; its output width is unit 'blocks.{index}.out'"
            continue
        mid = block.mid(ins[index])
        if block.op in (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1):
            if not has_expand(block, ins[index]):
                reasons[name] = (f"(mbconv without expand conv) has inner width = input width {ins[index]}; "
                                 "it is pruned with the unit that writes its input")
                continue
            units[name] = Unit(name, INNER, mid, (Writer(f"{prefix}.expand", 0, mid),), None, index,
                               shuffle=block.groups)
        elif block.op is Op.GHOST:
            writers, primary = _ghost_writers(f"{prefix}.expand", mid)
            units[name] = Unit(name, INNER, mid, tuple(writers), primary, index)
        else:
            units[name] = Unit(name, INNER, mid, (Writer(f"{prefix}.branch2.0", 0, mid),), None, index)
    # output groups: maximal runs of tensors t_a..t_b joined by blocks a..b-1
    start = 0
    while start <= count:
        end = start
        while end < count and _ties(spec.blocks[end], ins[end]):
            end += 1
        producer, members = start - 1, tuple(range(start, end))
        name = "stem" if producer < 0 else f"blocks.{producer}.out"
        consumer = end if end < count else None
        problem = _group_problem(spec, producer, members, consumer)
        partitions = {writer_groups(spec.blocks[producer])} if producer >= 0 else set()
        for reader in (*members, *([consumer] if consumer is not None else [])):
            partitions.add(reader_groups(spec.blocks[reader], ins[reader]))
        partitions.update(writer_groups(spec.blocks[member]) for member in members)
        partitions.discard(1)
        if problem:
            reasons[name] = problem
        else:
            writers, primary = _output_writers(spec, producer)
            for member in members:
                more, member_primary = _output_writers(spec, member)
                writers += more
                primary = primary or member_primary
            width = spec.stem.out_channels if producer < 0 else spec.blocks[producer].out_channels
            if primary is not None and partitions:
                problem = "mixes Ghost modules' channel pairs with grouped convs; pruning it is not supported"
                reasons[name] = problem
            else:
                units[name] = Unit(name, OUTPUT, width, tuple(writers), primary, producer, members, consumer,
                                   tuple(sorted(partitions)))
        for member in members:
            reasons[f"blocks.{member}.out"] = (
                f"is tied by residual adds to {name!r} (blocks {', '.join(map(str, members))} add their input "
                f"to their output); set the ratio on {name!r} to prune the whole group"
                if not problem else problem
            )
        start = end + 1
    return units, reasons


# ---- state-dict edits ---------------------------------------------------------------------------


def _rows(state: StateDict, key: str, index: Tensor) -> None:
    state[key] = state[key].index_select(0, index)


def _columns(state: StateDict, key: str, index: Tensor) -> None:
    state[key] = state[key].index_select(1, index)


def conv_bn_out(state: StateDict, prefix: str, index: Tensor) -> None:
    """Keep output channels `index` of a ConvBNAct (conv filters and every BN vector)."""
    _rows(state, f"{prefix}.0.weight", index)
    for name in ("weight", "bias", "running_mean", "running_var"):
        _rows(state, f"{prefix}.1.{name}", index)


def conv_in(state: StateDict, prefix: str, index: Tensor) -> None:
    _columns(state, f"{prefix}.0.weight", index)


def _se_channels(state: StateDict, prefix: str, index: Tensor) -> None:
    if f"{prefix}.reduce.weight" not in state:  # block without SE
        return
    _columns(state, f"{prefix}.reduce.weight", index)
    _rows(state, f"{prefix}.expand.weight", index)
    _rows(state, f"{prefix}.expand.bias", index)


def _ghost_out(state: StateDict, prefix: str, index: Tensor, width: int) -> None:
    """Keep channels `index` (closed under pairs) of a Ghost module's output."""
    kept_primary = index[index < math.ceil(width / 2)]
    conv_bn_out(state, f"{prefix}.primary", kept_primary)
    conv_bn_out(state, f"{prefix}.cheap", kept_primary)


def slice_inner(state: StateDict, block: BlockSpec, index: int, kept: Tensor, mid: int) -> None:
    prefix = f"blocks.{index}"
    if block.op in (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1):
        conv_bn_out(state, f"{prefix}.expand", kept)
        shuffled = shuffled_index(kept, mid, block.groups)  # the depthwise conv reads the shuffled tensor
        conv_bn_out(state, f"{prefix}.depthwise", shuffled)
        _se_channels(state, f"{prefix}.se", shuffled)
        grouped_conv_in(state, f"{prefix}.project.0.weight", shuffled, block.groups, mid)
    elif block.op is Op.GHOST:
        _ghost_out(state, f"{prefix}.expand", kept, mid)
        if block.stride > 1:
            conv_bn_out(state, f"{prefix}.depthwise", kept)
        _se_channels(state, f"{prefix}.se", kept)
        conv_in(state, f"{prefix}.project.primary", kept)
    else:
        conv_bn_out(state, f"{prefix}.branch2.0", kept)
        conv_bn_out(state, f"{prefix}.branch2.1", kept)
        _se_channels(state, f"{prefix}.branch2.2", kept)
        conv_in(state, f"{prefix}.branch2.3", kept)


def slice_output(state: StateDict, spec: ArchSpec, index: int, kept: Tensor) -> None:
    """Keep output channels `kept` of block `index` (-1: the stem)."""
    if index < 0:
        conv_bn_out(state, "stem.0", kept)
        return
    block, prefix = spec.blocks[index], f"blocks.{index}"
    if block.op in (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1):
        conv_bn_out(state, f"{prefix}.project", kept)
    elif block.op is Op.DSCONV:
        conv_bn_out(state, f"{prefix}.1", kept)
    elif block.op is Op.PW:
        conv_bn_out(state, prefix, kept)
    else:
        _ghost_out(state, f"{prefix}.project", kept, block.out_channels)
        if not block.has_residual(block_inputs(spec)[index]):
            conv_bn_out(state, f"{prefix}.shortcut.1", kept)


def slice_input(state: StateDict, spec: ArchSpec, index: int | None, kept: Tensor) -> None:
    """Keep input channels `kept` of block `index` (None: the head)."""
    if index is None:
        for key in ("head.conv.0.weight", "head.hidden.0.weight", "head.classifier.weight"):
            if key in state:  # the first layer the head has reads the features
                _columns(state, key, kept)
                return
        raise KeyError("state dict has no head layer (head.conv / head.hidden / head.classifier)")
    block, prefix = spec.blocks[index], f"blocks.{index}"
    in_channels = block_inputs(spec)[index]
    groups = reader_groups(block, in_channels)
    if block.op in (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1):
        if has_expand(block, in_channels):
            grouped_conv_in(state, f"{prefix}.expand.0.weight", kept, groups, in_channels)
        else:  # the depthwise runs on the input itself
            conv_bn_out(state, f"{prefix}.depthwise", kept)
            _se_channels(state, f"{prefix}.se", kept)
            grouped_conv_in(state, f"{prefix}.project.0.weight", kept, groups, in_channels)
    elif block.op is Op.PW:
        conv_in(state, prefix, kept)
    elif block.op is Op.DSCONV:
        conv_bn_out(state, f"{prefix}.0", kept)
        conv_in(state, f"{prefix}.1", kept)
    elif block.op is Op.GHOST:
        conv_in(state, f"{prefix}.expand.primary", kept)
        if not block.has_residual(in_channels):
            conv_bn_out(state, f"{prefix}.shortcut.0", kept)
            conv_in(state, f"{prefix}.shortcut.1", kept)
    else:  # stride-2 ShuffleNetV2 unit: both branches read the whole input
        conv_bn_out(state, f"{prefix}.branch1.0", kept)
        conv_in(state, f"{prefix}.branch1.1", kept)
        conv_in(state, f"{prefix}.branch2.0", kept)


def fit_squeeze(state: StateDict, spec: ArchSpec) -> list[str]:
    """Shrink SE bottlenecks to the width the pruned spec gives them.

    The spec derives the squeeze width from the block input (EfficientNet style) or the inner
    width (MobileNetV3, GhostNet), so pruning either can shrink it; we keep the squeeze neurons
    whose reduce filters have the largest L1 norm. This is the one lossy step besides the pruned
    channels themselves. Returns the blocks changed."""
    changed = []
    for index, (block, in_channels) in enumerate(zip(spec.blocks, block_inputs(spec))):
        if not block.se_ratio or block.op is Op.DSCONV:
            continue
        prefix = f"blocks.{index}.branch2.2" if block.op is Op.SHUFFLE else f"blocks.{index}.se"
        block_in = block.out_channels // 2 if block.op is Op.SHUFFLE and block.stride == 1 else in_channels
        squeeze = se_squeeze_channels(block.se_style, block.se_ratio, block_in, block.mid(in_channels))
        reduce = state[f"{prefix}.reduce.weight"]
        if squeeze == reduce.shape[0]:
            continue
        if squeeze > reduce.shape[0]:
            raise ValueError(f"blocks.{index}: pruned spec asks for a wider SE ({squeeze} > {reduce.shape[0]})")
        scores = reduce.flatten(1).abs().sum(1)
        kept = torch.argsort(scores, descending=True, stable=True)[:squeeze].sort().values
        _rows(state, f"{prefix}.reduce.weight", kept)
        _rows(state, f"{prefix}.reduce.bias", kept)
        _columns(state, f"{prefix}.expand.weight", kept)
        changed.append(f"blocks.{index}")
    return changed
