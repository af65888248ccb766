"""Which sub-networks an epoch of supernet training samples: the sandwich rule over the whole
space every epoch, or progressive shrinking (Cai et al., ICLR 2020, Sec. 3.2): first the
largest network alone, then one elastic dimension more per phase (kernel, depth, expansion,
width: `ElasticAdapter.dimensions`), each phase sampling only sub-networks whose other
dimensions are largest, distilled from the largest throughout.

A phase is a function of the epoch alone (the epochs split by `phase_fractions`), so a resumed
training finds its phase from the checkpoint's epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from search_spaces.errors import OptionError

__all__ = ["SCHEDULES", "EpochPlan", "epoch_plan", "phase_epochs"]

SCHEDULES = ("sandwich", "progressive")


def phase_epochs(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Epochs per phase: phase i ends at epochs * (f_0 + ... + f_i) rounded (the last at `epochs`),
    so a phase may get none when the epochs are fewer than the phases."""
    ends, total = [], 0.0
    for fraction in fractions[:-1]:
        total += fraction
        ends.append(min(epochs, math.floor(epochs * total + 0.5 + 1e-9)))  # half up, not Python's half-even
    ends.append(epochs)
    return [end - start for start, end in zip([0] + ends[:-1], ends)]


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """One epoch's place in the schedule: `elastic` the free dimensions (None: all, the sandwich
    rule), `phase` its index, and the epochs of its learning-rate cycle (`first_epoch` is 1-based)."""

    phase: int
    elastic: frozenset[str] | None
    first_epoch: int
    cycle_epochs: int


def epoch_plan(epoch: int, epochs: int, schedule: str, phases: list[frozenset[str]],
               fractions: tuple[float, ...] | None) -> EpochPlan:
    """The plan of 1-based `epoch`. Progressive shrinking restarts the cosine learning rate in every
    phase, as OFA trains each of its stages with its own schedule; the sandwich rule runs one cycle."""
    if schedule == "sandwich":
        return EpochPlan(0, None, 1, epochs)
    if schedule != "progressive":
        raise OptionError(f"schedule={schedule!r} not in {{{', '.join(SCHEDULES)}}}")
    fractions = fractions if fractions is not None else tuple(1.0 / len(phases) for _ in phases)
    if len(fractions) != len(phases):
        names = ["largest"] + ["+" + "+".join(sorted(p - q)) for q, p in zip(phases, phases[1:])]
        raise OptionError(f"phase_fractions has {len(fractions)} entries; this space has {len(phases)} phases "
                          f"({', '.join(names)})")
    start = 1
    for index, count in enumerate(phase_epochs(epochs, fractions)):
        if start <= epoch < start + count:
            return EpochPlan(index, phases[index], start, count)
        start += count
    raise OptionError(f"epoch {epoch} is outside 1..{epochs}")
