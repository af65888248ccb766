"""Lottery tickets: the geometric prune schedule, the step-k snapshot, IMP with rewinding on a
4-weight layer whose every value can be followed by hand, and the controls' rows."""

import pytest
import torch
from torch import nn

from compress.lottery import LotteryPlan, compare_tickets, find_tickets, snapshot_after_steps
from compress.policy import PolicyError


def _layer(values=(0.5, 2.5, 3.0, -4.0)) -> nn.Linear:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values]))
    return layer


def _two_steps(model: nn.Module) -> int:
    """Two SGD steps (lr 1) on the output for an all-ones input: every unmasked weight drops by 1 a step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.ones(1, 4)).sum().backward()
        optimizer.step()
    return 2


def test_rounds_remove_the_same_fraction_of_what_remains():
    steps = LotteryPlan((0.5, 0.75), rounds=2).steps()
    assert [round(s, 4) for s, _ in steps] == [0.2929, 0.5, 0.6464, 0.75]  # 1 - sqrt(0.5), ...
    assert [target for _, target in steps] == [False, True, False, True]


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsities": (0.5, 1.0)}, r"sparsity=1.0: expected fractions in \[0, 1\)"),
    ({"sparsities": (0.8, 0.5)}, r"sparsity=\[0.8, 0.5\]: expected a strictly increasing list"),
    ({"rounds": 0}, r"rounds=0: expected an int >= 1"),
    ({"rewind_steps": -1}, r"rewind_steps=-1: expected an int >= 0"),
])
def test_bad_plans_are_refused_by_field(kwargs, message):
    with pytest.raises(PolicyError, match=message):
        LotteryPlan(**kwargs)


def test_snapshot_is_the_state_after_k_steps():
    state, step, result = snapshot_after_steps(_layer(), 1, _two_steps)
    assert (step, result) == (1, 2)
    assert state["weight"].tolist() == [[-0.5, 1.5, 2.0, -5.0]]
    state, step, _ = snapshot_after_steps(_layer(), 5, _two_steps)  # a shorter run: its final state
    assert step == 2 and state["weight"].tolist() == [[-1.5, 0.5, 1.0, -6.0]]


def test_imp_prunes_by_trained_magnitude_and_rewinds_the_survivors_to_step_k():
    tickets, dense = find_tickets(_layer(), _two_steps, LotteryPlan((0.5, 0.75), rewind_steps=1))
    assert dense == {"rewind_step": 1, "dense_report": 2}
    # trained |w| = (1.5, 0.5, 1.0, 6.0): the middle two go; survivors restart at step 1 (-0.5, -5) and train 2 steps
    assert tickets[0].masks[""].tolist() == [[1, 0, 0, 1]]
    assert tickets[0].model.weight.tolist() == [[-2.5, 0.0, 0.0, -7.0]]
    # the zeros go first, then the smaller survivor; the masks only ever lose weights
    assert tickets[1].masks[""].tolist() == [[0, 0, 0, 1]]
    assert tickets[1].model.weight.tolist() == [[0.0, 0.0, 0.0, -7.0]]
    assert [t.sparsity for t in tickets] == [0.5, 0.75]


def test_compare_tickets_gives_every_method_at_every_target():
    trained = _layer((-1.5, 0.5, 1.0, -6.0))
    result = compare_tickets(_layer(), LotteryPlan((0.5, 0.75)), train=_two_steps,
                             evaluate=lambda m: float(m.weight.detach().abs().sum()),
                             fresh=lambda: _layer((1.0, 1.0, 1.0, 1.0)), trained=trained, finetune=_two_steps)
    assert [(r["sparsity"], r["method"]) for r in result.rows] == [
        (s, m) for s in (0.5, 0.75) for m in ("rewind", "reinit", "scratch", "finetune")]
    assert all(r["measured_sparsity"] == r["sparsity"] for r in result.rows)
    # finetune at 50%: trained survivors (-1.5, -6) after two steps -> (-3.5, -8), |.| summed
    assert result.rows[3]["accuracy"] == 11.5
    assert trained.weight.tolist() == [[-1.5, 0.5, 1.0, -6.0]]  # the trained network is not changed
