"""`SupernetPlan`: how a search space becomes a one-shot supernet, as plain data.

A space knows its own decisions, so it says (`SearchSpace.supernet_plan()`) which decisions a
supernet trains as mixed layers and where their layers sit; `nas.oneshot.layout` builds the
supernet's candidates from the plan without knowing which space it came from. A new space gets a
supernet by implementing that one method.

Terms: a *slot* owns one vector of architecture logits and one option per logit; a slot's layers
are the blocks of the reference network (`base_vector` decoded) that its choice sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.errors import UserError

__all__ = ["Slot", "SupernetPlan", "SupernetPlanError"]


class SupernetPlanError(UserError, ValueError):
    """A space, or the plan options it was given, cannot be turned into a supernet."""


@dataclass(frozen=True, slots=True)
class Slot:
    """One vector of architecture logits. `assignments[o]` is what option `o` sets in the space's
    decision vector, as (decision index, option index) pairs; `skip` is the option that removes
    the slot's layers (None when there is none)."""

    name: str
    labels: tuple[str, ...]
    assignments: tuple[tuple[tuple[int, int], ...], ...]
    skip: int | None = None

    @property
    def size(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, slots=True)
class SupernetPlan:
    """`base_vector`: a decision vector where no slot's layer is skipped (the reference network);
    `positions[s]`: the block indices of slot `s`'s layers in that network."""

    slots: tuple[Slot, ...]
    base_vector: tuple[int, ...]
    positions: tuple[tuple[int, ...], ...]
