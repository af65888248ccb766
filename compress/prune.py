"""Channel pruning with channels physically removed: a smaller dense model and the `ArchSpec`
that builds exactly it.

    policy = PrunePolicy("l1", {"blocks.3": 0.5, "blocks.2.out": 0.25})
    pruned_spec, pruned_state = prune(spec, policy, state_dict)
    model = build_model(pruned_spec); model.load_state_dict(pruned_state, strict=True)

What can be pruned (inner widths, and output widths with residual groups pruned as a whole) is
described in `prune_graph.py`; `prunable_units(spec)` lists the names and widths.

Filter ranking (higher score = kept), on the layer(s) that write the channel:

- ``l1``  — L1 norm of each output filter (Li et al., ICLR 2017).
- ``bn``  — |gamma| of the batch norm after the conv (network slimming, Liu et al., ICCV 2017).
- ``fpgm`` — the filter's summed Euclidean distance to the layer's other filters (He et al., CVPR
  2019): the filters nearest the geometric median are the most replaceable, so the smallest
  sums go first (the paper's own approximation of "nearest the geometric median").

Channels are chosen on the original weights for every unit, then removed everywhere at once, so a
unit's choice does not depend on the order units are visited.

Widths: ``kept = width * (1 - ratio)`` rounded to the nearest multiple of ``round_to``, never
below ``min(round_to, width)`` and never above ``width``; ratio 0 leaves the unit untouched. A
width that would change the network's structure (an MBConv inner width equal to its input, which
makes the builder drop the expand conv; an output width that would create or remove an identity
shortcut; a ShuffleNet V1 input that would flip whether its first 1x1 is grouped) moves to the
nearest allowed multiple, preferring to keep more channels. A unit touched by grouped convs or a
channel shuffle (FBNet's `_g2` ops, ShuffleNet V1) rounds to a multiple of `round_to` and of its
group counts, and skips widths its cells cannot give (`compress.prune_grouped`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

import compress.prune_graph as graph
from compress.policy import PolicyEnvelope, PolicyError, check_choice, check_layers, check_number
from compress.prune_graph import INNER, Unit, analyse, block_inputs, has_expand, reader_groups, structure
from compress.prune_grouped import choose_in_cells, infeasible_widths, width_step
from search_spaces.build import Network, build_model
from search_spaces.spec import ArchSpec, Op

logger = logging.getLogger(__name__)

CRITERIA = ("l1", "bn", "fpgm")
MAX_RATIO = 0.9
KIND = "prune"


def channel_scores(criterion: str, weight: Tensor, bn_weight: Tensor | None = None) -> Tensor:
    """Importance of each output filter of a conv (`weight`: out x in/groups x k x k); higher = keep."""
    check_choice(KIND, "criterion", criterion, CRITERIA)
    if criterion == "bn":
        if bn_weight is None:
            raise ValueError("criterion 'bn' needs the batch-norm weights (gamma) of the layer")
        return bn_weight.detach().abs().double()
    flat = weight.detach().flatten(1).double()
    if criterion == "l1":
        return flat.abs().sum(1)
    return torch.cdist(flat, flat).sum(1)


def select_channels(scores: Tensor, keep: int) -> Tensor:
    """Sorted indices of the `keep` highest scores; ties go to the lower index."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


@dataclass(frozen=True)
class PrunePolicy:
    """Per-unit prune ratios (fraction of channels removed) and how filters are ranked."""

    criterion: str = "l1"
    ratios: Mapping[str, float] = field(default_factory=dict)
    round_to: int = 8

    def __post_init__(self) -> None:
        check_choice(KIND, "criterion", self.criterion, CRITERIA)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise PolicyError(f"prune policy: round_to={self.round_to!r} must be an integer >= 1 (default 8)")
        if not isinstance(self.ratios, Mapping):
            raise PolicyError(f"prune policy: ratios must map layer name -> ratio, got {type(self.ratios).__name__}")
        ratios = {str(name): check_number(KIND, name, value, 0.0, MAX_RATIO) for name, value in self.ratios.items()}
        object.__setattr__(self, "ratios", ratios)

    @classmethod
    def uniform(cls, spec: ArchSpec, ratio: float, criterion: str = "l1", *, round_to: int = 8,
                kinds: Iterable[str] = (INNER, graph.OUTPUT)) -> PrunePolicy:
        """The same ratio on every prunable unit of the given kinds ("inner", "output")."""
        units, _ = analyse(spec)
        wanted = set(kinds)
        return cls(criterion, {name: ratio for name, unit in units.items() if unit.kind in wanted}, round_to)

    def validate(self, spec: ArchSpec) -> None:
        """Every layer named must be a prunable unit of `spec`; the error lists those that are."""
        low_rank = [f"blocks[{i}]" for i, b in enumerate(spec.blocks) if b.ranks] + [
            part for part in ("stem", "head") if getattr(spec, part).ranks]
        if low_rank:  # the pruner's weight map knows full convs only
            raise PolicyError(f"{KIND} policy: {', '.join(low_rank)} have low-rank layers (ranks); prune the "
                              "network before factorizing it")
        units, reasons = analyse(spec)
        check_layers(KIND, self.ratios, {**reasons, **dict.fromkeys(units)})

    def to_envelope(self) -> PolicyEnvelope:
        return PolicyEnvelope(KIND, dict(self.ratios), {"criterion": self.criterion, "round_to": self.round_to})

    def to_dict(self) -> dict[str, Any]:
        return self.to_envelope().to_dict()

    @classmethod
    def from_dict(cls, data: Any) -> PrunePolicy:
        envelope = PolicyEnvelope.from_dict(data, KIND)
        unknown = sorted(set(envelope.settings) - {"criterion", "round_to"})
        if unknown:
            raise PolicyError(f"prune policy: unknown setting(s) {unknown}; allowed: ['criterion', 'round_to']")
        return cls(envelope.settings.get("criterion", "l1"), envelope.layers, envelope.settings.get("round_to", 8))

    def to_json(self) -> str:
        return self.to_envelope().to_json()

    @classmethod
    def from_json(cls, text: str) -> PrunePolicy:
        return cls.from_dict(PolicyEnvelope.from_json(text, KIND).to_dict())

    def save(self, path: str | os.PathLike) -> None:
        self.to_envelope().save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePolicy:
        return cls.from_dict(PolicyEnvelope.load(path, KIND).to_dict())


def prunable_units(spec: ArchSpec) -> dict[str, int]:
    """Policy names that `spec` accepts, with their current widths."""
    units, _ = analyse(spec)
    return {name: unit.width for name, unit in units.items()}


def pruned_width(width: int, ratio: float, round_to: int = 8, *, even: bool = False,
                 forbidden: Iterable[int] = ()) -> int:
    """The width kept for `ratio` (see the module docstring for the rule)."""
    if ratio == 0:
        return width
    low = min(round_to, width)
    target = min(width, max(low, round_to * math.floor(width * (1 - ratio) / round_to + 0.5)))
    banned = set(forbidden)
    # nearest first, the wider of two equally near candidates first: never prune more than asked
    steps = sorted(range(-width // round_to - 1, width // round_to + 2), key=lambda s: (abs(s), -s))
    for step in steps:
        candidate = target + step * round_to
        if candidate == width:  # the unpruned width is always valid (the rules only guard pruned ones)
            return width
        if low <= candidate < width and candidate not in banned and (not even or candidate % 2 == 0):
            return candidate
    return width


@dataclass(frozen=True)
class PrunePlan:
    """The pruned spec and each unit's (old, new) width, computed from the spec alone."""

    original: ArchSpec
    spec: ArchSpec
    widths: dict[str, tuple[int, int]]
    units: dict[str, Unit]


def plan_prune(spec: ArchSpec, policy: PrunePolicy) -> PrunePlan:
    """Widths and pruned spec without touching weights: cheap enough for a search loop."""
    policy.validate(spec)
    units, _ = analyse(spec)
    blocks, ins = spec.blocks, block_inputs(spec)
    tensor = [spec.stem.out_channels] + [block.out_channels for block in blocks]  # new width of t_k
    widths: dict[str, tuple[int, int]] = {}
    residual_ops = (Op.MBCONV, Op.GHOST, Op.IRF)
    # output groups in network order: a group's rule needs the new width of the group before it
    for name, unit in sorted(units.items(), key=lambda item: item[1].block):
        if unit.kind != graph.OUTPUT:
            continue
        every = width_step(policy.round_to, unit.partitions)
        banned = infeasible_widths(unit.width, every, unit.partitions)
        producer = unit.block
        if producer >= 0 and blocks[producer].stride == 1 and blocks[producer].op in residual_ops:
            banned.add(tensor[producer])  # equal in/out would give the producer a shortcut
        consumer = unit.consumer
        if consumer is not None and blocks[consumer].stride == 1 and blocks[consumer].op in residual_ops:
            banned.add(blocks[consumer].out_channels)
        for reader in (*unit.members, *([consumer] if consumer is not None else [])):
            mid = blocks[reader].mid(ins[reader])
            if blocks[reader].op is Op.MBCONV and has_expand(blocks[reader], ins[reader]):
                banned.add(mid)  # the expand conv would vanish
            if blocks[reader].op is Op.SHUFFLE_V1 and reader_groups(blocks[reader], ins[reader]) > 1:
                banned.update(range(1, mid))  # a narrower input would make the first 1x1 dense
        new = pruned_width(unit.width, policy.ratios.get(name, 0.0), every,
                           even=unit.ghost_primary is not None, forbidden=banned)
        for position in range(producer + 1, (consumer if consumer is not None else len(blocks)) + 1):
            tensor[position] = new
        widths[name] = (unit.width, new)
    new_blocks = []
    for index, block in enumerate(blocks):
        mid = block.mid(ins[index]) if block.op not in (Op.DSCONV, Op.PW) else None
        unit = units.get(f"blocks.{index}")
        if unit is not None:
            every = width_step(policy.round_to, (), unit.shuffle)
            banned = infeasible_widths(unit.width, every, (), unit.shuffle)
            if block.op is Op.MBCONV:
                banned.add(tensor[index])
            if block.op is Op.SHUFFLE_V1 and reader_groups(block, ins[index]) == 1:
                banned.update(range(1, tensor[index] + 1))  # the first 1x1 stays dense: mid > input
            mid = pruned_width(unit.width, policy.ratios.get(unit.name, 0.0), every,
                               even=unit.ghost_primary is not None, forbidden=banned)
            widths[unit.name] = (unit.width, mid)
        elif block.op is Op.MBCONV:
            mid = tensor[index]  # no expand conv: the inner tensor is the input
        new_block = replace(block, out_channels=tensor[index + 1])
        if mid is not None and new_block.mid(tensor[index]) != mid:
            new_block = replace(new_block, mid_channels=mid)
        new_blocks.append(new_block)
    pruned = spec.replace(stem=replace(spec.stem, out_channels=tensor[0]), blocks=tuple(new_blocks))
    _check_structure(spec, pruned)
    return PrunePlan(spec, pruned, widths, units)


def _check_structure(before: ArchSpec, after: ArchSpec) -> None:
    """Pruning removes channels, never layers or shortcuts (the width rules guarantee it)."""
    for index, (old, new, old_in, new_in) in enumerate(
        zip(before.blocks, after.blocks, block_inputs(before), block_inputs(after))
    ):
        if structure(old, old_in) != structure(new, new_in):
            raise RuntimeError(f"blocks.{index}: pruning changed the block's structure ({old} -> {new})")


def _choose(unit: Unit, new_width: int, state: Mapping[str, Tensor], criterion: str) -> Tensor:
    """Channels of `unit` to keep: the best-scoring channel groups (singletons or Ghost pairs)."""
    scores = torch.zeros(unit.width, dtype=torch.float64)
    for writer in unit.writers:
        bn = state.get(f"{writer.prefix}.1.weight")
        filters = channel_scores(criterion, state[f"{writer.prefix}.0.weight"], bn)
        scores[writer.offset:writer.offset + writer.count] += filters[: writer.count]
    if unit.partitions or unit.shuffle > 1:  # grouped convs: the best channels of every cell
        return choose_in_cells(scores, new_width, unit.partitions, unit.shuffle, select_channels)
    # a pruned Ghost width is even, so only full pairs are candidates (see prune_graph)
    groups = torch.tensor(unit.channel_groups(paired_only=unit.ghost_primary is not None), dtype=torch.long)
    chosen = select_channels(scores[groups].sum(1), new_width // groups.shape[1])
    return groups[chosen].flatten().sort().values


def prune(
    source: Network | ArchSpec,
    policy: PrunePolicy,
    state_dict: Mapping[str, Tensor] | None = None,
) -> tuple[ArchSpec, dict[str, Tensor]]:
    """Remove channels as `policy` says. `source` is a built `Network` (its weights are used unless
    `state_dict` is given) or a spec with its `state_dict`. The result is checked by loading it
    into `build_model(pruned_spec)` with `strict=True`."""
    if isinstance(source, Network):
        spec, state_dict = source.spec, state_dict if state_dict is not None else source.state_dict()
    elif isinstance(source, ArchSpec):
        spec = source
        if state_dict is None:
            raise ValueError("prune(spec, policy, state_dict): a spec needs its trained state_dict")
    else:
        raise TypeError(f"prune() takes a Network or an ArchSpec, got {type(source).__name__}")
    _check_state(spec, state_dict)
    plan = plan_prune(spec, policy)
    original = {key: value.detach() for key, value in state_dict.items()}
    kept = {
        name: _choose(plan.units[name], new, original, policy.criterion)
        for name, (old, new) in plan.widths.items() if new != old
    }
    state = {key: value.clone() for key, value in original.items()}
    for name, index in kept.items():
        unit = plan.units[name]
        if unit.kind == INNER:
            graph.slice_inner(state, spec.blocks[unit.block], unit.block, index, unit.width)
            continue
        graph.slice_output(state, spec, unit.block, index)
        for member in unit.members:
            graph.slice_input(state, spec, member, index)
            graph.slice_output(state, spec, member, index)
        graph.slice_input(state, spec, unit.consumer, index)
    squeezed = graph.fit_squeeze(state, plan.spec)
    if squeezed:
        logger.info("SE bottlenecks narrowed by the spec's SE rule in %s", ", ".join(squeezed))
    build_model(plan.spec).load_state_dict(state, strict=True)  # the contract: it builds exactly
    logger.info("pruned %s: %s", spec.name or spec.content_hash(),
                ", ".join(f"{n} {o}->{w}" for n, (o, w) in plan.widths.items() if o != w) or "nothing")
    return plan.spec, state


def prune_model(model: Network, policy: PrunePolicy) -> Network:
    """`prune` for a built model: a new `Network` with the pruned weights loaded (same device, dtype, mode)."""
    spec, state = prune(model, policy)
    pruned = build_model(spec)
    reference = next(model.parameters(), None)
    if reference is not None:  # before loading: loading into float32 would round float64 weights
        pruned.to(reference.device, reference.dtype)
    pruned.load_state_dict(state, strict=True)
    return pruned.train(model.training)


def _check_state(spec: ArchSpec, state: Mapping[str, Tensor]) -> None:
    """The weights must be those of `build_model(spec)`; say which key is off, not a shape error later."""
    expected = build_model(spec).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"state_dict does not fit the spec: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"state_dict[{key!r}] has shape {tuple(state[key].shape)}, the spec builds "
                             f"{tuple(value.shape)}")


__all__ = [
    "CRITERIA", "MAX_RATIO", "PrunePlan", "PrunePolicy", "channel_scores", "plan_prune", "prunable_units",
    "prune", "prune_model", "pruned_width", "select_channels",
]
