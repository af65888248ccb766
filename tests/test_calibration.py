"""Calibrating a latency table against whole networks: the fit, the prediction it drives, and
`validate_table`'s figures, on fake measurements whose true model is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from predictors.cost import layer_weights
from predictors.latency import Calibration, LatencyTable, LocalMeasurer, Measurement, build_table, validate_table
from predictors.latency.validate import fit_calibration, out_of_fold_predictions
from search_spaces.build import build_layer, layer_shapes
from test_lut import CountingMeasurer
from tiny_space import TinySpace


def conv_and_linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_layer_weights_count_conv_and_linear_weights_of_every_candidate_op() -> None:
    layers = TinySpace().candidate_ops()
    assert [layer_weights(layer) for layer in layers] == [conv_and_linear_weights(build_layer(layer)) for layer in layers]
    # stem: 3x3 conv 3 -> 8 = 216 weights
    assert layer_weights(layers[0]) == 216


def test_fit_recovers_a_known_model_exactly() -> None:
    raw = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    weights = np.array([2e6, 1e6, 4e6, 3e6, 5e6])
    measured = 1.5 * raw + 0.2 * weights / 1e6 + 0.1
    calibration = fit_calibration(raw, weights, measured)
    assert calibration.slope == pytest.approx(1.5)
    assert calibration.ms_per_mweight == pytest.approx(0.2)
    assert calibration.intercept_ms == pytest.approx(0.1)
    assert calibration.samples == 5
    assert calibration.apply(2.0, 1e6) == pytest.approx(3.3)


def test_fit_never_makes_weights_or_op_time_speed_a_network_up() -> None:
    raw = np.array([1.0, 2.0, 3.0, 4.0])
    weights = np.array([4e6, 3e6, 2e6, 1e6])
    measured = 2.0 * raw - 0.1 * weights / 1e6 + 1.0  # weights "speeding up": not physical
    calibration = fit_calibration(raw, weights, measured)
    assert calibration.ms_per_mweight == 0.0
    assert calibration.slope > 0


def test_out_of_fold_predictions_of_an_exact_model_are_exact() -> None:
    raw = np.linspace(1, 3, 10)
    weights = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3]) * 1e6
    measured = 1.2 * raw + 0.05 * weights / 1e6 + 0.3
    assert out_of_fold_predictions(raw, weights, measured) == pytest.approx(measured)


def test_calibrated_prediction_is_a_sum_of_layer_costs(tmp_path: Path) -> None:
    space = TinySpace()
    table = build_table(space, CountingMeasurer(), tmp_path / "t.json")
    table.calibration = Calibration(slope=1.5, intercept_ms=0.25, samples=8, ms_per_mweight=100.0)
    for arch in space.all_archs():
        layers = layer_shapes(arch)
        raw = sum(table.entries[layer.signature].median_ms for layer in layers)
        weights = sum(layer_weights(layer) for layer in layers)
        assert table.predict(arch, calibrated=False) == pytest.approx(raw)
        assert table.predict(arch) == pytest.approx(1.5 * raw + 100.0 * weights / 1e6 + 0.25)
        assert table.intercept_ms + sum(table.layer_ms(layer) for layer in layers) == pytest.approx(table.predict(arch))


def test_calibration_round_trips_and_old_files_read_no_weight_term(tmp_path: Path) -> None:
    table = build_table(TinySpace(), CountingMeasurer(), tmp_path / "t.json")
    table.calibration = Calibration(slope=1.5, intercept_ms=0.25, samples=8, ms_per_mweight=0.125)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").calibration == table.calibration
    data = json.loads((tmp_path / "t.json").read_text())
    data["calibration"] = {"slope": 1.5, "intercept_ms": 0.25, "samples": 8}  # written before the weight term
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert LatencyTable.load(tmp_path / "old.json").calibration.ms_per_mweight == 0.0


class LinearNetworkMeasurer(CountingMeasurer):
    """Whole networks cost 1.25 x their entries + 0.5 ms per million weights + 0.1 ms, exactly."""

    def __init__(self, table: LatencyTable) -> None:
        super().__init__()
        self.table = table
        self.arch_calls: list[int] = []

    def measure_archs(self, archs, progress=None):
        self.arch_calls.append(len(archs))
        out = []
        for arch in archs:
            layers = layer_shapes(arch)
            ms = 1.25 * self.table.predict(arch, calibrated=False) + 0.5 * sum(map(layer_weights, layers)) / 1e6 + 0.1
            out.append(Measurement(ms, ms, ms, 1))
        if progress is not None:
            progress(len(archs))
        return out


def test_validation_measures_every_network_in_one_call_and_stores_the_fit(tmp_path: Path) -> None:
    space = TinySpace()
    table = build_table(space, CountingMeasurer(), tmp_path / "t.json")
    measurer = LinearNetworkMeasurer(table)
    report = validate_table(table, space, measurer, samples=8, seed=0, plot_path=tmp_path / "scatter.png")
    assert measurer.arch_calls == [8]  # all 8 architectures of the tiny space, interleaved together
    assert report.calibrated.mape == pytest.approx(0.0, abs=1e-9)
    assert report.calibrated.within_10pct == 1.0
    assert report.raw.within_10pct == 0.0  # raw sums miss the 25% and the weight term
    assert (report.calibration.slope, report.calibration.ms_per_mweight, report.calibration.intercept_ms) == (
        pytest.approx(1.25), pytest.approx(0.5), pytest.approx(0.1))
    assert table.calibration == report.calibration
    assert table.validation["calibrated_out_of_fold"]["mape"] == pytest.approx(0.0, abs=1e-9)
    assert (tmp_path / "scatter.png").stat().st_size > 0


def test_validation_needs_enough_networks_for_three_parameters(tmp_path: Path) -> None:
    space = TinySpace()
    table = build_table(space, CountingMeasurer(), tmp_path / "t.json")
    with pytest.raises(ValueError, match="samples=3 must be >= 4"):
        validate_table(table, space, LinearNetworkMeasurer(table), samples=3)


class OnnxRuntimeLabelledMeasurer(CountingMeasurer):
    """Fake entries, labelled as an onnxruntime table so `nas lut validate` measures with the real backend."""

    def metadata(self) -> dict:
        here = LocalMeasurer("onnxruntime", threads=1).metadata()  # built on this machine: validated here
        return {"backend": "onnxruntime", "threads": 1, "device": here["device"], "cpu_model": here["cpu_model"]}


def test_lut_validate_cli_samples_the_restricted_space_the_table_was_built_for(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nas.cli import app
    from search_spaces.spaces import get_space

    options = {"ops": ["mbconv"], "kernels": [3, 5], "expand_ratios": [3], "se_ratios": [0.0], "layer_deltas": [0],
               "width_multipliers": [0.5]}
    space = get_space("mnasnet", resolution=16, num_classes=4, **options)
    path = tmp_path / "restricted.json"
    build_table(space, OnnxRuntimeLabelledMeasurer(), path)
    assert LatencyTable.load(path).metadata["space_options"] == options
    # the full space would sample ops this table lacks (MissingEntriesError); the recorded options prevent it
    result = CliRunner().invoke(app, ["lut", "validate", str(path), "--samples", "4"])
    assert result.exit_code == 0, result.output
    validated = LatencyTable.load(path)
    assert validated.calibration is not None and validated.calibration.samples == 4
    assert validated.validation["samples"] == 4 and (tmp_path / "restricted.validation.png").is_file()
