"""Specialisation: evolution over a predictor, under a latency budget."""

from __future__ import annotations

import numpy as np
import pytest

from nas.oneshot.ofa_specialize import BudgetError, EvolutionSettings, specialize
from predictors.latency.lut import MissingEntriesError
from search_spaces.errors import OptionError
from search_spaces.spaces import get_space


def tiny_space():
    return get_space("mnasnet", resolution=16, num_classes=4, ops=["mbconv"], kernels=[3, 5, 7],
                     expand_ratios=[3, 6], se_ratios=[0.0], layer_deltas=[-1, 0], width_multipliers=[0.5, 1.0])


class ToyPredictor:
    """Accuracy grows with every option index (a bigger kernel, expansion, width is better)."""

    def __init__(self, space) -> None:
        self.space = space

    def predict_vectors(self, vectors):
        return np.array([0.5 + 0.01 * sum(vector) for vector in vectors])


class ToyLatency:
    """1 ms plus 0.1 ms per option index: the better network is the slower one."""

    label = "toy"

    def __init__(self, space, refuse_kernel: int | None = None) -> None:
        self.space, self.refuse_kernel = space, refuse_kernel

    def predict(self, arch) -> float:
        if arch.blocks[0].kernel == self.refuse_kernel:
            raise MissingEntriesError([f"k{self.refuse_kernel}"], self.label)
        return 1.0 + 0.1 * sum(int(v) for v in self.space.encode(arch))


SETTINGS = EvolutionSettings(population=12, generations=10)


def test_result_is_feasible_and_no_worse_than_the_first_population() -> None:
    space = tiny_space()
    result = specialize(ToyPredictor(space), ToyLatency(space), 2.0, SETTINGS, seed=0)
    assert result.latency_ms <= 2.0
    assert result.predicted_accuracy >= result.initial_best
    # the predictor's optimum under 2 ms: 10 option steps (1 + 0.1 * 10 = 2.0), accuracy 0.5 + 0.01 * 10
    assert result.predicted_accuracy == pytest.approx(0.60)
    assert result.vector == [int(v) for v in space.encode(result.arch)]
    assert result.history == sorted(result.history)  # parents survive: the best never drops


def test_same_seed_same_answer() -> None:
    space = tiny_space()
    first = specialize(ToyPredictor(space), ToyLatency(space), 2.2, SETTINGS, seed=3)
    second = specialize(ToyPredictor(space), ToyLatency(space), 2.2, SETTINGS, seed=3)
    assert (first.vector, first.evaluated) == (second.vector, second.evaluated)


def test_networks_the_model_or_the_supernet_cannot_vouch_for_are_never_chosen() -> None:
    space = tiny_space()
    result = specialize(ToyPredictor(space), ToyLatency(space, refuse_kernel=7), 3.0, SETTINGS, seed=0,
                        covers=lambda arch: arch.blocks[0].expand_ratio != 6)
    # the toy predictor prefers kernel 7 and expansion 6 everywhere, the first block included
    assert result.arch.blocks[0].kernel != 7 and result.arch.blocks[0].expand_ratio != 6


def test_budget_below_the_smallest_network_names_the_budget() -> None:
    space = tiny_space()
    smallest = space.decode([0] * len(space.decisions))
    with pytest.raises(BudgetError, match=r"latency_budget=0.5 ms is below the smallest sub-network's .* 1 ms"):
        specialize(ToyPredictor(space), ToyLatency(space), 0.5, SETTINGS, smallest=smallest)
    with pytest.raises(BudgetError, match=r"latency_budget=0.5 ms: none of 20 sampled"):
        specialize(ToyPredictor(space), ToyLatency(space), 0.5, EvolutionSettings(population=4, tries=5))


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(OptionError, match="evolution.parent_ratio=0"):
        EvolutionSettings(parent_ratio=0)
    space = tiny_space()
    with pytest.raises(OptionError, match="latency_budget"):
        specialize(ToyPredictor(space), ToyLatency(space), float("nan"), SETTINGS)
