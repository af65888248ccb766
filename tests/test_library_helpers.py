"""The library steps the benchmarks and the CLI share: a table built and calibrated on demand, a
budget as a quantile of predicted latency, named training recipes, zoo specs on small inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas.training import TrainConfig, recipe
from predictors.latency import LatencyTable, Measurement, ensure_table
from search_spaces import final_map_size, small_input, zoo
from search_spaces.build import layer_shapes
from tiny_space import TinySpace


class LinearMeasurer:
    """1 ms per layer; a whole network measures `slope * layers + intercept` ms."""

    def __init__(self, slope: float, intercept: float) -> None:
        self.slope, self.intercept = slope, intercept
        self.layers = self.archs = 0

    def metadata(self) -> dict:
        return {"backend": "fake", "threads": 1, "device": "test"}

    def measure_layers(self, layers, progress=None):
        self.layers += len(layers)
        return [Measurement(1.0, 1.0, 1.0, 1) for _ in layers]

    def measure_archs(self, archs, progress=None):
        self.archs += len(archs)
        times = [self.slope * len(layer_shapes(arch)) + self.intercept for arch in archs]
        return [Measurement(t, t, t, 1) for t in times]


def test_ensure_table_builds_calibrates_then_reuses(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    first = LinearMeasurer(slope=0.5, intercept=0.2)
    table = ensure_table(TinySpace(), first, path, calibration_samples=6, show_progress=False)
    assert (first.layers, first.archs) == (10, 6)  # every candidate op, then 6 whole networks
    assert table.calibration.slope == pytest.approx(0.5)
    assert table.calibration.intercept_ms == pytest.approx(0.2)
    assert path.with_suffix(".validation.png").is_file()
    again = LinearMeasurer(slope=0.5, intercept=0.2)
    reused = ensure_table(TinySpace(), again, path, calibration_samples=6, show_progress=False)
    assert (again.layers, again.archs) == (0, 0)
    # a 2-block network: 4 layers of 1 ms, calibrated to 0.5 * 4 + 0.2
    assert reused.predict(TinySpace().decode([0, 0, 1])) == pytest.approx(2.2)


def test_ensure_table_drops_a_calibration_that_does_not_help_and_does_not_retry(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    exact = LinearMeasurer(slope=1.0, intercept=0.0)  # raw sums are already exact
    assert ensure_table(TinySpace(), exact, path, calibration_samples=6, show_progress=False).calibration is None
    again = LinearMeasurer(slope=1.0, intercept=0.0)
    ensure_table(TinySpace(), again, path, calibration_samples=6, show_progress=False)
    assert again.archs == 0


def test_ensure_table_without_calibration_samples_leaves_raw_sums(tmp_path: Path) -> None:
    measurer = LinearMeasurer(slope=0.5, intercept=0.2)
    table = ensure_table(TinySpace(), measurer, tmp_path / "t.json", calibration_samples=0, show_progress=False)
    assert (table.calibration, measurer.archs) == (None, 0)
    assert table.predict(TinySpace().decode([0, 0, 1])) == 4.0


def one_ms_per_layer() -> LatencyTable:
    """Predicts 3 ms for the tiny space's 1-block networks and 4 ms for its 2-block ones."""
    return LatencyTable({}, {layer.signature: Measurement(1.0, 1.0, 1.0, 1) for layer in TinySpace().candidate_ops()})


def test_quantile_of_sampled_predictions() -> None:
    table, space = one_ms_per_layer(), TinySpace()
    # seed 0 draws networks of 4, 3, 3, 4, 4 ms: sorted 3 3 4 4 4, the 0.3 quantile lies 0.2 of
    # the way from the 2nd to the 3rd value
    assert table.quantile(space, 0.3, 5, seed=0) == pytest.approx(3.2)
    assert (table.quantile(space, 0.0, 50, seed=0), table.quantile(space, 1.0, 50, seed=0)) == (3.0, 4.0)


def test_quantile_half_is_the_median_of_the_same_draw() -> None:
    table, space = one_ms_per_layer(), TinySpace()
    rng = np.random.default_rng(7)
    median = float(np.median([table.predict(space.sample(rng)) for _ in range(500)]))
    assert table.quantile(space, 0.5, 500, seed=7) == median


def test_recipe_lays_its_fields_over_the_base_then_the_overrides() -> None:
    base = TrainConfig(batch_size=32, seed=3, device="cpu", max_batches_per_epoch=5)
    assert recipe("finetune", base, epochs=1) == TrainConfig(
        epochs=1, batch_size=32, optimizer="adamw", lr=1e-3, seed=3, device="cpu", max_batches_per_epoch=5)
    assert recipe("final", seed=1) == TrainConfig(epochs=12, batch_size=64, seed=1, augment="crop-flip",
                                                  label_smoothing=0.1, weight_decay=5e-4)
    with pytest.raises(KeyError, match="finetune"):
        recipe("fine-tune")


def test_small_input_mobilenet_v2_at_32px_ends_in_a_4x4_map() -> None:
    spec = zoo.get("mobilenet_v2", 32, 10)
    adapted = small_input(spec)
    assert (final_map_size(spec), final_map_size(adapted)) == (1, 4)
    assert adapted.stem.stride == 1
    # the first stride-2 block (blocks[1]) keeps the resolution; the other three stay stride 2
    assert [b.stride for b in adapted.blocks] == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]


def test_small_input_drops_shufflenet_pool_and_leaves_its_units() -> None:
    spec = zoo.get("shufflenet_v2_x1_0", 32, 10)
    adapted = small_input(spec)
    assert (adapted.stem.stride, adapted.stem.pool) == (1, False)
    assert adapted.blocks == spec.blocks and final_map_size(adapted) == 4


def test_small_input_leaves_imagenet_resolutions_alone() -> None:
    spec = zoo.get("mobilenet_v2", 224, 1000)
    assert small_input(spec) is spec
