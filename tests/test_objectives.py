"""MnasNet reward, feasibility and Pareto utilities, checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from nas.strategies.objective import (
    hard_reward,
    hypervolume_2d,
    is_feasible,
    mnas_reward,
    pareto_front,
    soft_reward,
)


def test_reward_at_target_is_accuracy() -> None:
    assert mnas_reward(0.75, 80, 80, -0.07) == 0.75
    assert soft_reward(0.75, 80, 80) == 0.75
    assert hard_reward(0.75, 80, 80) == 0.75


def test_soft_reward_numbers() -> None:
    # 2 ** -0.07 = 0.9526379980439373: twice as slow costs ~4.7% of the reward
    assert soft_reward(0.75, 160, 80) == pytest.approx(0.714478498532953, rel=1e-12)
    assert soft_reward(0.75, 160, 80) == pytest.approx(0.75 * 0.9526379980439373, rel=1e-12)
    # faster than target is rewarded with the same exponent: 0.75 * 0.5 ** -0.07
    assert soft_reward(0.75, 40, 80) == pytest.approx(0.7872875127173005, rel=1e-12)
    assert soft_reward(0.8, 40, 80, w=-0.07) == pytest.approx(0.839773346898454, rel=1e-12)


def test_hard_reward_under_and_over_target() -> None:
    assert hard_reward(0.6, 50, 80) == 0.6  # w = 0 under the target: speed earns nothing
    assert hard_reward(0.6, 100, 80) == pytest.approx(0.48, rel=1e-12)  # 0.6 * 80 / 100
    assert hard_reward(0.6, 160, 80) == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((1.5, 80, 80, -0.07), "accuracy"),
        ((75.0, 80, 80, -0.07), "accuracy"),
        ((0.5, 0, 80, -0.07), "latency_ms"),
        ((0.5, -3, 80, -0.07), "latency_ms"),
        ((0.5, 80, 0, -0.07), "target_ms"),
        ((0.5, 80, math.inf, -0.07), "target_ms"),
        ((0.5, 80, 80, math.nan), "w"),
    ],
)
def test_reward_rejects_bad_inputs_by_name(args: tuple[float, ...], named: str) -> None:
    with pytest.raises(ValueError, match=rf"^{named}="):
        mnas_reward(*args)


def test_hard_reward_validates_too() -> None:
    with pytest.raises(ValueError, match="target_ms"):
        hard_reward(0.5, 10, -1)


def test_is_feasible() -> None:
    assert is_feasible(5.0, 6.0)
    assert is_feasible(6.0, 6.0)
    assert not is_feasible(6.01, 6.0)
    assert not is_feasible(math.inf, 6.0)
    with pytest.raises(ValueError, match="budget_ms"):
        is_feasible(1.0, 0.0)
    with pytest.raises(ValueError, match="latency_ms"):
        is_feasible(math.nan, 6.0)


def test_pareto_front_hand_made() -> None:
    points = [
        (0.70, 5.0),  # 0 front: fastest
        (0.80, 8.0),  # 1 front
        (0.75, 9.0),  # 2 dominated by 1
        (0.90, 12.0),  # 3 front: most accurate
        (0.80, 10.0),  # 4 dominated by 1 (same accuracy, slower)
        (0.65, 5.0),  # 5 dominated by 0 (same latency, less accurate)
        (0.80, 8.0),  # 6 duplicate of 1: kept as well
    ]
    assert pareto_front(points) == [0, 1, 3, 6]


def test_pareto_front_other_directions_and_edges() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 3.0)]) == [0]
    # both minimised: (1, 1) dominates everything else
    assert pareto_front([(2.0, 2.0), (1.0, 1.0), (1.0, 3.0)], maximize=(False, False)) == [1]
    # three objectives
    assert pareto_front([(1, 1, 1), (0, 2, 1), (0, 0, 0)], maximize=(True, True, True)) == [0, 1]
    with pytest.raises(ValueError, match=r"points\[1\]"):
        pareto_front([(0.5, 1.0), (math.nan, 1.0)])
    with pytest.raises(ValueError, match="2-tuples"):
        pareto_front([(0.5, 1.0, 2.0)])


def test_hypervolume_known_set() -> None:
    # boxes [0, 0.9] x [10, 20] (area 9) and [0, 0.8] x [5, 20] (12) overlap on 8: union 13
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 8.0)]  # the third is dominated: adds nothing
    assert hypervolume_2d(points, reference=(0.0, 20.0)) == pytest.approx(13.0, rel=1e-12)
    assert hypervolume_2d(points[:1], reference=(0.0, 20.0)) == pytest.approx(9.0, rel=1e-12)
    # a point beyond the reference latency contributes nothing; order does not matter
    assert hypervolume_2d([(0.99, 30.0), *reversed(points)], reference=(0.0, 20.0)) == (
        pytest.approx(13.0, rel=1e-12)
    )
    assert hypervolume_2d([], reference=(0.0, 20.0)) == 0.0
    with pytest.raises(ValueError, match="reference"):
        hypervolume_2d(points, reference=(0.0, math.inf))


def test_hypervolume_grows_with_a_better_front() -> None:
    worse = [(0.7, 8.0)]
    better = [(0.7, 8.0), (0.8, 6.0)]
    assert hypervolume_2d(better, (0.0, 20.0)) > hypervolume_2d(worse, (0.0, 20.0))
