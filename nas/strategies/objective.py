"""Search objectives: the MnasNet reward, latency constraints and Pareto utilities.

The MnasNet reward (Tan et al., 2019, eq. 2) folds latency into one scalar::

    reward = ACC(m) * (LAT(m) / T) ** w,   w = alpha if LAT(m) <= T else beta

- soft constraint: alpha = beta = -0.07 (the paper's choice: a model twice as slow must be
  about 5% more accurate, 2 ** -0.07 ~= 0.9526, to score the same);
- hard constraint: alpha = 0, beta = -1 (no reward for being faster than T, a steep penalty
  for exceeding it).

Pareto helpers work on (accuracy, latency_ms) pairs by default: accuracy maximised, latency
minimised, as in ``maximize=(True, False)``.
"""

from __future__ import annotations

import math
from numbers import Real
from collections.abc import Sequence

import numpy as np

__all__ = ["HARD_ALPHA", "HARD_BETA", "SOFT_EXPONENT", "hard_reward", "hypervolume_2d", "is_feasible", "mnas_reward",
           "mnas_weight", "pareto_front", "soft_reward"]

SOFT_EXPONENT = -0.07
HARD_ALPHA = 0.0
HARD_BETA = -1.0


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a finite number > 0")


def _check_accuracy(accuracy: float) -> None:
    if not (isinstance(accuracy, Real) and 0.0 <= accuracy <= 1.0):
        raise ValueError(f"accuracy={accuracy!r} must be a fraction in [0, 1] (not a percentage)")


def mnas_reward(accuracy: float, latency_ms: float, target_ms: float, w: float) -> float:
    """``accuracy * (latency_ms / target_ms) ** w`` with the inputs checked."""
    _check_accuracy(accuracy)
    _check_positive("latency_ms", latency_ms)
    _check_positive("target_ms", target_ms)
    if not (isinstance(w, Real) and math.isfinite(w)):
        raise ValueError(f"w={w!r} must be a finite number (MnasNet uses -0.07, or 0 / -1)")
    return accuracy * (latency_ms / target_ms) ** w


def mnas_weight(latency_ms: float, target_ms: float, alpha: float, beta: float) -> float:
    """The exponent of eq. 2: ``alpha`` when within the target, ``beta`` when over it."""
    return alpha if latency_ms <= target_ms else beta


def soft_reward(accuracy: float, latency_ms: float, target_ms: float, w: float = SOFT_EXPONENT) -> float:
    """Soft-constrained reward: the same exponent ``w`` on both sides of the target."""
    return mnas_reward(accuracy, latency_ms, target_ms, w)


def hard_reward(accuracy: float, latency_ms: float, target_ms: float) -> float:
    """Hard-constrained reward: plain accuracy within target, ``accuracy * T / LAT`` over it."""
    w = mnas_weight(latency_ms, target_ms, HARD_ALPHA, HARD_BETA)
    return mnas_reward(accuracy, latency_ms, target_ms, w)


def is_feasible(latency_ms: float, budget_ms: float) -> bool:
    """True when ``latency_ms <= budget_ms``; an infinite latency (unmeasurable) is infeasible."""
    _check_positive("budget_ms", budget_ms)
    if math.isnan(latency_ms) or latency_ms < 0:
        raise ValueError(f"latency_ms={latency_ms!r} must be >= 0 (inf allowed), not NaN")
    return latency_ms <= budget_ms


def _as_minimisation(points: Sequence[Sequence[float]], maximize: Sequence[bool], what: str) -> np.ndarray:
    """Points as an (n, k) array in which smaller is better on every axis."""
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, len(maximize))
    if array.ndim != 2 or array.shape[1] != len(maximize):
        raise ValueError(f"{what}: points must be a sequence of {len(maximize)}-tuples matching "
                         f"maximize={tuple(maximize)}, got shape {array.shape}")
    if np.isnan(array).any():
        row = int(np.flatnonzero(np.isnan(array).any(axis=1))[0])
        raise ValueError(f"{what}: points[{row}]={tuple(array[row])} contains NaN")
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return array * signs


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool] = (True, False)) -> list[int]:
    """Indices of the non-dominated points, in ascending (input) order.

    ``a`` dominates ``b`` when it is at least as good on every objective and strictly better on
    one. Exact duplicates do not dominate each other, so all copies of a front point are kept
    (a caller wanting one per value can de-duplicate the returned indices). Works for any number
    of objectives; O(n^2) with vectorised rows, fine for the thousands of trials of a search.
    """
    costs = _as_minimisation(points, maximize, "pareto_front")
    front = []
    for i in range(len(costs)):
        no_worse = (costs <= costs[i]).all(axis=1)
        better = (costs < costs[i]).any(axis=1)
        if not (no_worse & better).any():
            front.append(i)
    return front


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float],
                   maximize: Sequence[bool] = (True, False)) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (the worst corner).

    For (accuracy, latency_ms) a natural reference is ``(0.0, budget_ms)`` or a latency above
    every trial. Points not strictly better than the reference on both axes add nothing.
    Larger is better; compare searches only with the same reference.
    """
    if len(maximize) != 2:
        raise ValueError(f"hypervolume_2d: maximize must have 2 entries, got {tuple(maximize)}")
    ref = _as_minimisation([reference], maximize, "hypervolume_2d reference")
    if not np.isfinite(ref).all():
        raise ValueError(f"hypervolume_2d: reference={tuple(reference)} must be finite")
    costs = _as_minimisation(points, maximize, "hypervolume_2d")
    ref_x, ref_y = ref[0]
    inside = costs[(costs[:, 0] < ref_x) & (costs[:, 1] < ref_y)]
    if len(inside) == 0:
        return 0.0
    front = inside[pareto_front(inside, maximize=(False, False))]
    # sweep along x: on a 2-D front sorted by x ascending, y descends, so each point owns the
    # strip from its x to the next point's x, from its y up to the reference
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    next_x = np.append(front[1:, 0], ref_x)
    return float(np.sum((next_x - front[:, 0]) * (ref_y - front[:, 1])))
