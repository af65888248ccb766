"""The once-for-all accuracy predictor: an MLP ensemble on one-hot canonical vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nas.oneshot.ofa_predictor import AccuracyPredictor, PredictorConfig, PredictorFileError, one_hot
from search_spaces.errors import OptionError
from search_spaces.spaces import get_space

SMALL = PredictorConfig(members=2, hidden=64, layers=3, epochs=200, lr=3e-3, folds=4)


def tiny_space():
    return get_space("mnasnet", resolution=16, num_classes=4, ops=["mbconv"], kernels=[3, 5, 7],
                     expand_ratios=[3, 6], se_ratios=[0.0], layer_deltas=[-1, 0], width_multipliers=[0.5, 1.0])


def additive_target(space, count: int, seed: int, noise: float) -> tuple[list, np.ndarray]:
    """accuracy = 0.6 + a fixed effect per (decision, option) + Gaussian noise."""
    rng = np.random.default_rng(seed)
    effects = [np.random.default_rng(100 + i).normal(0, 0.02, n) for i, n in enumerate(space.cardinalities)]
    archs = [space.sample(rng) for _ in range(count)]
    values = [0.6 + sum(effects[i][v] for i, v in enumerate(space.encode(arch))) for arch in archs]
    return archs, np.asarray(values) + rng.normal(0, noise, count)


def test_one_hot_sets_one_column_per_decision() -> None:
    x = one_hot([[0, 2], [1, 0]], [2, 3])
    assert x.tolist() == [[1, 0, 0, 0, 1], [0, 1, 1, 0, 0]]


def test_fit_learns_an_additive_target_far_below_its_spread() -> None:
    space = tiny_space()
    archs, y = additive_target(space, 160, seed=0, noise=0.002)
    predictor = AccuracyPredictor(space, SMALL).fit(archs[:120], y[:120], seed=0)
    held_out = float(np.sqrt(np.mean((predictor.predict(archs[120:]) - y[120:]) ** 2)))
    spread = float(y.std())
    assert spread > 0.03
    assert held_out < 0.3 * spread  # the k-fold estimate and a fresh held-out set agree on "well below"
    assert predictor.rmse is not None and predictor.rmse < 0.4 * spread
    assert predictor.samples == 120


def test_fit_is_a_function_of_data_and_seed() -> None:
    space = tiny_space()
    archs, y = additive_target(space, 30, seed=1, noise=0.0)
    config = PredictorConfig(members=2, hidden=16, epochs=20, folds=3)
    first = AccuracyPredictor(space, config).fit(archs, y, seed=5)
    second = AccuracyPredictor(space, config).fit(archs, y, seed=5)
    assert first.rmse == second.rmse
    assert np.array_equal(first.predict(archs[:5]), second.predict(archs[:5]))


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    space = tiny_space()
    archs, y = additive_target(space, 30, seed=2, noise=0.0)
    predictor = AccuracyPredictor(space, PredictorConfig(members=2, hidden=16, epochs=20, folds=3)).fit(archs, y)
    predictor.provenance = {"supernet_epoch": 4}
    json_path, weights_path = predictor.save(tmp_path / "predictor")
    assert (json_path.name, weights_path.name) == ("predictor.json", "predictor.safetensors")
    loaded = AccuracyPredictor.load(tmp_path / "predictor", space)
    assert np.array_equal(loaded.predict(archs), predictor.predict(archs))
    assert (loaded.rmse, loaded.samples, loaded.config) == (predictor.rmse, 30, predictor.config)
    assert loaded.provenance == {"supernet_epoch": 4}
    assert json.loads(json_path.read_text())["space"]["name"] == "mnasnet"


def test_load_refuses_a_predictor_of_another_space(tmp_path: Path) -> None:
    space = tiny_space()
    archs, y = additive_target(space, 10, seed=3, noise=0.0)
    AccuracyPredictor(space, PredictorConfig(members=1, hidden=8, epochs=2, folds=0)).fit(archs, y).save(tmp_path / "p")
    other = get_space("mnasnet", resolution=16, num_classes=4, ops=["mbconv"], kernels=[3, 5])
    with pytest.raises(PredictorFileError, match="fit it again"):
        AccuracyPredictor.load(tmp_path / "p", other)


def test_bad_settings_and_data_name_the_field() -> None:
    with pytest.raises(OptionError, match="predictor.folds=1"):
        PredictorConfig(folds=1)
    space = tiny_space()
    with pytest.raises(OptionError, match="finite"):
        AccuracyPredictor(space).fit([space.sample(np.random.default_rng(0))] * 2, [0.5, float("nan")])
