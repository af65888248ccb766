"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, and the controls that say
whether the ticket's initialisation matters.

IMP (Frankle & Carbin, ICLR 2019), with rewinding to an early iteration k instead of to the
initialisation (Frankle et al., ICML 2020, "Linear mode connectivity and the lottery ticket
hypothesis", which finds rewinding needed beyond small networks):

    train the dense network, keeping a copy of its weights after k optimizer steps
    repeat: prune p% of the remaining weights (smallest |w|) -> rewind the survivors to step k
            -> retrain with the masks held at zero
    until each target sparsity; the network at a target is that sparsity's ticket.

`LotteryPlan.steps` spreads the pruning geometrically: `rounds` prune-retrain rounds from the
dense network to the first target and between consecutive targets, each round removing the same
fraction of what remains. Training is the caller's (`train(model)`: the one train loop, from
`nas`), so this module only decides masks and weights.

The controls of `compare_tickets`, at every target sparsity:

- ``reinit``: the ticket's masks on a fresh random initialisation, retrained alike -- the lottery
  paper's control: if it matches, the initialisation did not matter.
- ``scratch``: the masks one-shot magnitude pruning takes from the *trained* network (the pruned
  architecture of the usual pipeline), random init, trained alike -- "Rethinking the value of
  network pruning" (Liu et al., ICLR 2019); for unstructured sparsity the architecture is the mask.
- ``finetune``: the usual baseline, that trained network pruned with those masks and fine-tuned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from compress.policy import PolicyError
from compress.sparsity import SCOPES, apply_masks, magnitude_masks, remove_masks, sparsity_of

__all__ = ["LotteryPlan", "Ticket", "TicketComparison", "compare_tickets", "find_tickets", "snapshot_after_steps"]

TrainFn = Callable[[nn.Module], Any]  # trains the model in place; what it returns is kept as the report
EvalFn = Callable[[nn.Module], float]


@dataclass(frozen=True)
class LotteryPlan:
    """Target sparsities (increasing, each in [0, 1)), prune rounds per target, the rewind step k."""

    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9)
    rounds: int = 1
    rewind_steps: int = 0
    # the lottery paper ranks its deep conv nets globally; on MobileNet-like nets a global ranking
    # empties whole depthwise convs and the classifier by 80% (measured on digits): layer collapse
    scope: str = "layer"

    def __post_init__(self) -> None:
        values = tuple(self.sparsities)
        if not values:
            raise PolicyError("sparsity: give at least one target, e.g. 0.5,0.8,0.9")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise PolicyError(f"sparsity={value!r}: expected fractions in [0, 1)")
        if any(later <= earlier for earlier, later in zip(values, values[1:])):
            raise PolicyError(f"sparsity={list(values)}: expected a strictly increasing list")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise PolicyError(f"rounds={self.rounds!r}: expected an int >= 1")
        if isinstance(self.rewind_steps, bool) or not isinstance(self.rewind_steps, int) or self.rewind_steps < 0:
            raise PolicyError(f"rewind_steps={self.rewind_steps!r}: expected an int >= 0 (0: the initialisation)")
        if self.scope not in SCOPES:
            raise PolicyError(f"scope={self.scope!r}: expected one of {list(SCOPES)}")
        object.__setattr__(self, "sparsities", tuple(float(v) for v in values))

    def steps(self) -> list[tuple[float, bool]]:
        """(sparsity after the round, whether it is a target) for every prune-retrain round."""
        out, remaining = [], 1.0
        for target in self.sparsities:
            factor = ((1.0 - target) / remaining) ** (1.0 / self.rounds)
            for r in range(1, self.rounds + 1):
                out.append((target if r == self.rounds else 1.0 - remaining * factor ** r, r == self.rounds))
            remaining = 1.0 - target
        return out


def snapshot_after_steps(model: nn.Module, k: int, train: TrainFn) -> tuple[dict[str, Tensor], int, Any]:
    """Run `train(model)` and return (a copy of the state after `k` optimizer steps, the step it is
    from, train's result). A step is seen as a training-mode forward: the (k+1)-th one starts after
    k steps (the one train loop runs one forward per step). A run shorter than k steps gives its
    final state and says so with the step count."""
    state: dict[str, Tensor] = {}
    seen = 0

    def grab() -> dict[str, Tensor]:
        return {key: value.detach().clone().cpu() for key, value in model.state_dict().items()}

    def hook(module: nn.Module, args: Any) -> None:
        nonlocal seen, state
        if module.training:
            if seen == k:
                state = grab()
            seen += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        result = train(model)
    finally:
        handle.remove()
    if seen <= k:
        state = grab()
    return state, min(seen, k), result


@dataclass
class Ticket:
    sparsity: float                 # fraction of prunable weights at zero
    masks: dict[str, Tensor]        # layer name -> 0/1, as `compress.sparsity` takes them
    model: nn.Module                # the retrained ticket, masks baked in (plain weights, zeros kept)
    report: Any                     # what train() returned for its last retraining


def _rewound(model: nn.Module, state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> nn.Module:
    remove_masks(model)
    model.load_state_dict(state)
    return apply_masks(model, masks)  # raw * mask: the pruned weights start (and stay) at zero


def _baked(model: nn.Module) -> nn.Module:
    """A plain copy with the masks baked in; `model` keeps its masks."""
    return remove_masks(copy.deepcopy(model))


def find_tickets(model: nn.Module, train: TrainFn, plan: LotteryPlan,
                 on_round: Callable[[float, Any], None] | None = None) -> tuple[list[Ticket], dict[str, Any]]:
    """IMP with rewinding from `model`'s current (untrained) weights, changed in place; one ticket
    per target sparsity, plus the dense run's facts (rewind step, its report)."""
    rewind, step, dense_report = snapshot_after_steps(model, plan.rewind_steps, train)
    tickets, masks = [], {}
    for sparsity, is_target in plan.steps():
        new = magnitude_masks(model, sparsity, scope=plan.scope)  # pruned weights are 0: they go first
        masks = {name: mask * masks[name] if name in masks else mask for name, mask in new.items()}
        report = train(_rewound(model, rewind, masks))
        if on_round is not None:
            on_round(sparsity, report)
        if is_target:
            tickets.append(Ticket(sparsity, {k: v.clone() for k, v in masks.items()}, _baked(model), report))
    return tickets, {"rewind_step": step, "dense_report": dense_report}


@dataclass
class TicketComparison:
    tickets: list[Ticket]
    rows: list[dict[str, Any]]      # {"sparsity", "method", "accuracy", "measured_sparsity"} per network
    dense: dict[str, Any]


def compare_tickets(init: nn.Module, plan: LotteryPlan, *, train: TrainFn, evaluate: EvalFn,
                    fresh: Callable[[], nn.Module], trained: nn.Module | None = None,
                    finetune: TrainFn | None = None) -> TicketComparison:
    """IMP tickets from `init` (copied) and, at each target, the controls of the module docstring.
    `fresh()` gives a new random initialisation (another seed than `init`'s); without `trained`
    (the trained dense network) there is no ``scratch`` or ``finetune`` row."""
    tickets, dense = find_tickets(copy.deepcopy(init), train, plan)
    rows: list[dict[str, Any]] = []

    def row(method: str, sparsity: float, model: nn.Module) -> None:
        rows.append({"sparsity": sparsity, "method": method, "accuracy": evaluate(model),
                     "measured_sparsity": sparsity_of(model)["total"]})

    for ticket in tickets:
        row("rewind", ticket.sparsity, ticket.model)
        control = apply_masks(fresh(), ticket.masks)
        train(control)
        row("reinit", ticket.sparsity, remove_masks(control))
        if trained is None:
            continue
        one_shot = magnitude_masks(trained, ticket.sparsity, scope=plan.scope)
        scratch = apply_masks(fresh(), one_shot)
        train(scratch)
        row("scratch", ticket.sparsity, remove_masks(scratch))
        if finetune is not None:
            pruned = apply_masks(copy.deepcopy(trained), one_shot)
            finetune(pruned)
            row("finetune", ticket.sparsity, remove_masks(pruned))
    return TicketComparison(tickets, rows, dense)

