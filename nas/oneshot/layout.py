"""`SupernetLayout`: which layers of a search space become mixed layers, what their candidates
are, and how a choice per mixed layer maps back to the space's decision vector.

A layout is built from the space's *public* interface only (`supernet_plan`, `decode`, `layer_shapes`):
every candidate block is read off a network the space itself decoded, so the blocks a supernet
trains are exactly the blocks of the architecture it derives (same `BlockSpec`, same input shape,
same latency-table key). The constructor checks this and refuses spaces where it would not hold.

Terms: a *slot* owns one vector of architecture logits (alpha) and one option per logit; a *mixed
layer* is one position of the supernet, with one candidate module per option of its slot. In
`proxyless` every decision is one layer (22 slots, 22 layers, `skip` is an option of every
non-first layer of a stage). In `mnasnet` the space repeats one block per stage, so a slot is a
stage's (kernel, expansion) pair of MBConv and all layers of the stage share it; the stage's op
(MBConv), SE ratio, layer count and width are fixed (see `MnasNetSpace.supernet_plan`) -- a
supernet over those would mix networks of different shapes, which this module does not attempt.
Each space says this in its `supernet_plan()`; this module knows no space by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces.errors import OptionError
from search_spaces.build import LayerShape, layer_shapes
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec, SpecError
from search_spaces.supernet_plan import Slot, SupernetPlanError

__all__ = ["LayoutError", "MixedLayerSpec", "Slot", "SupernetLayout", "layout_for_space"]


class LayoutError(OptionError):
    """A space (or its options) cannot be turned into a supernet; the message says why."""


@dataclass(frozen=True, slots=True)
class MixedLayerSpec:
    """One supernet position: the slot that chooses for it and one `LayerShape` per option of that
    slot (None for `skip`: the identity). Candidates of one layer share the input shape."""

    name: str
    slot: int
    candidates: tuple[LayerShape | None, ...]


class SupernetLayout:
    """Slots, mixed layers, the fixed stem and head, and choices -> decision vector -> `ArchSpec`."""

    def __init__(self, space: SearchSpace, slots: Sequence[Slot], base_vector: Sequence[int],
                 positions: Sequence[Sequence[int]]) -> None:
        """`base_vector`: a decision vector where no slot's layer is skipped (the reference
        network); `positions[s]`: the block indices of slot `s`'s layers in that network."""
        self.space = space
        self.slots = list(slots)
        self.base_vector = space.check_vector(base_vector)
        reference = space.decode(self.base_vector)
        shapes = layer_shapes(reference)
        self.reference = reference
        self.stem, self.head = shapes[0], shapes[-1]
        claimed = sorted(p for slot_positions in positions for p in slot_positions)
        if claimed != list(range(len(reference.blocks))):
            raise LayoutError(f"{space.name}: slots must cover every block of the reference network exactly once; "
                              f"they cover {claimed}, the network has {len(reference.blocks)} blocks")
        candidates: dict[int, list[LayerShape | None]] = {p: [] for p in claimed}
        owner = {p: s for s, slot_positions in enumerate(positions) for p in slot_positions}
        for s, slot in enumerate(self.slots):
            for option in range(slot.size):
                if option == slot.skip:
                    for p in positions[s]:
                        candidates[p].append(None)
                    continue
                arch = space.decode(self.vector_with(s, option))
                option_shapes = layer_shapes(arch)
                self._check_same_frame(arch, option_shapes, slot, option)
                for p in positions[s]:
                    candidates[p].append(option_shapes[p + 1])  # shapes[0] is the stem
        self.layers = [MixedLayerSpec(f"{self.slots[owner[p]].name}@blocks.{p}", owner[p], tuple(candidates[p]))
                       for p in claimed]
        for layer in self.layers:
            present = {(c.in_channels, c.in_size) for c in layer.candidates if c is not None}
            if len(present) != 1:
                raise LayoutError(f"{space.name}: candidates of {layer.name} see different inputs {sorted(present)}")

    # -- choices <-> architectures -----------------------------------------------------------------
    def vector_with(self, slot: int, option: int) -> list[int]:
        vector = list(self.base_vector)
        for decision, index in self.slots[slot].assignments[option]:
            vector[decision] = index
        return vector

    def check_choices(self, choices: Sequence[int]) -> list[int]:
        if len(choices) != len(self.slots):
            raise LayoutError(f"{self.space.name}: {len(choices)} choices for {len(self.slots)} slots")
        out = []
        for slot, choice in zip(self.slots, choices):
            if isinstance(choice, bool) or not 0 <= int(choice) < slot.size:
                raise LayoutError(f"{self.space.name}: {slot.name}={choice!r} not in 0..{slot.size - 1}")
            out.append(int(choice))
        return out

    def vector(self, choices: Sequence[int]) -> list[int]:
        """One option per slot -> the space's decision vector."""
        vector = list(self.base_vector)
        for slot, choice in zip(self.slots, self.check_choices(choices)):
            for decision, index in slot.assignments[choice]:
                vector[decision] = index
        return vector

    def derive(self, choices: Sequence[int], name: str = "") -> ArchSpec:
        """The network a choice per slot stands for, decoded by the space (so it is in it)."""
        arch = self.space.decode(self.vector(choices))
        return arch.replace(name=name) if name else arch

    def describe(self, choices: Sequence[int]) -> dict[str, str]:
        return {slot.name: slot.labels[c] for slot, c in zip(self.slots, self.check_choices(choices))}

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space.name, "slots": [{"name": s.name, "labels": list(s.labels)} for s in self.slots],
                "layers": [{"name": layer.name, "slot": layer.slot} for layer in self.layers]}

    def _check_same_frame(self, arch: ArchSpec, shapes: list[LayerShape], slot: Slot, option: int) -> None:
        # the stem and head are shared modules: no option may change what they see
        if len(arch.blocks) != len(self.reference.blocks):
            raise LayoutError(f"{self.space.name}: option {slot.labels[option]!r} of {slot.name} changes the number "
                              "of blocks; only its `skip` option may remove layers")
        if shapes[0].signature != self.stem.signature or shapes[-1].signature != self.head.signature:
            raise LayoutError(f"{self.space.name}: option {slot.labels[option]!r} of {slot.name} changes the stem "
                              "or the head's input; a supernet shares them")


def layout_for_space(space: SearchSpace, **options: Any) -> SupernetLayout:
    """The supernet layout of the plan `space.supernet_plan(**options)` gives (the mnasnet space
    takes `se_index`, `layers_index`, `width_index`; the proxyless space none)."""
    try:
        plan = space.supernet_plan(**options)
        return SupernetLayout(space, plan.slots, plan.base_vector, plan.positions)
    except (SpecError, SupernetPlanError) as error:
        raise LayoutError(f"{space.name}: {error}") from None
