"""`nas latency fit|predict`: reading measurements (every bad row named), the fitted model (exact on
a device that is an affine map of its source; additive; a `LatencyPredictor` like a table), its
file format and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nas.cli import app
from predictors.cost import layer_macs
from predictors.latency import LatencyTable, LatencyTableError, Measurement
from predictors.latency.fit import FittedLatencyModel, MeasurementsError, fit_latency_model, read_archs
from predictors.latency.predictor import LatencyPredictor, load_latency_predictor
from search_spaces.build import layer_shapes
from search_spaces.spaces import get_space

SPACE = get_space("fbnet", resolution=32, num_classes=100)


def source_table() -> LatencyTable:
    """A made-up device: 0.05 ms per layer plus 0.01 ms per million MACs."""
    entries = {}
    for layer in SPACE.candidate_ops():
        ms = 0.05 + layer_macs(layer) / 1e8
        entries[layer.signature] = Measurement(ms, ms, ms, 1)
    return LatencyTable({"device": "made-up"}, entries, space="fbnet", resolution=32, num_classes=100)


def sample_archs(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    while len(archs) < n:
        arch = SPACE.sample(rng)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "arch,latency_ms") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{ms}\n" for a, ms in rows))
    return path


# -- reading measurements --------------------------------------------------------------------------
ARCH = "-".join(["k3_e1"] * 22)
OTHER = "-".join(["k3_e1", "k3_e3", "skip", "k5_e6", "skip"] + ["k3_e1"] * 17)
SAME_AS_OTHER = "-".join(["k3_e1", "k3_e3", "k5_e6", "skip", "skip"] + ["k3_e1"] * 17)


@pytest.mark.parametrize(("rows", "message"), [
    ([(ARCH, "5"), ("k3_e1-skip", "4")], r"line 3: fbnet: 2 layer\(s\) in 'k3_e1-skip', expected 22"),
    ([(ARCH.replace("k3_e1", "k9_e1", 1), "5")], r"line 2: fbnet: unknown op\(s\) layer 1 'k9_e1'"),
    ([(ARCH, "fast")], r"line 2: latency_ms='fast' is not a number"),
    ([(ARCH, "0")], r"line 2: latency_ms='0' must be a positive number of ms"),
    ([(ARCH, "-3")], r"line 2: latency_ms='-3' must be a positive"),
    ([(ARCH, "nan")], r"line 2: latency_ms='nan' must be a positive"),
    ([(ARCH, "5"), (OTHER, "6"), (ARCH, "5.5")], rf"line 4: arch '{ARCH}' repeats line 2"),
    ([(OTHER, "6"), (SAME_AS_OTHER, "6.1")], r"line 3: arch '.*' is the same network as '.*' on line 2"),
])
def test_bad_rows_are_named(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(MeasurementsError, match=message):
        read_archs(write_csv(tmp_path / "m.csv", rows), SPACE, latencies=True)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MeasurementsError, match=r"columns \['arch', 'ms'\]; expected arch,latency_ms"):
        read_archs(write_csv(tmp_path / "m.csv", [(ARCH, "5")], header="arch,ms"), SPACE, latencies=True)
    with pytest.raises(MeasurementsError, match="no rows after the header"):
        read_archs(write_csv(tmp_path / "e.csv", []), SPACE, latencies=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_archs(tmp_path / "nope.csv", SPACE, latencies=True)
    # predicting needs no latency column and allows repeats
    rows = read_archs(write_csv(tmp_path / "p.csv", [(ARCH, ""), (ARCH, "")], header="arch,note"), SPACE,
                      latencies=False)
    assert [row.latency_ms for row in rows] == [None, None] and rows[0].arch == SPACE.from_arch_string(ARCH)


# -- the model -------------------------------------------------------------------------------------
def test_affine_device_is_recovered_exactly() -> None:
    table, archs = source_table(), sample_archs(15)
    measured = np.array([1.7 * table.predict(arch) + 0.4 for arch in archs])
    model = fit_latency_model(SPACE, archs, measured, [("made-up", table)], metadata={"device": "twin"})
    for arch in sample_archs(30, seed=1):
        assert model.predict(arch) == pytest.approx(1.7 * table.predict(arch) + 0.4, rel=1e-6)
    assert model.cross_validation["within_10pct"] == 1.0 and model.cross_validation["mape"] < 1e-6
    assert model.cross_validation["method"] == "10-fold" and model.fit["measurements"] == 15
    assert "twin, fitted on 15 measurements; cross-validated within ±10% 100%" in model.label


def test_model_is_additive_and_a_latency_predictor(tmp_path: Path) -> None:
    table, archs = source_table(), sample_archs(8)
    rng = np.random.default_rng(3)
    measured = np.array([table.predict(arch) * rng.uniform(0.9, 1.1) for arch in archs])
    model = fit_latency_model(SPACE, archs, measured, [("made-up", table)])
    assert model.cross_validation["method"] == "leave-one-out"
    arch = archs[0]
    assert model.predict(arch) == pytest.approx(
        model.intercept_ms + sum(model.layer_ms(layer) for layer in layer_shapes(arch)))
    assert [name for name, _, _ in model.layer_latencies(arch)][0] == "stem"
    assert isinstance(model, LatencyPredictor) and isinstance(table, LatencyPredictor)
    assert 0 < model.quantile(SPACE, 0.5, 20, seed=0) < 10
    model.save(tmp_path / "model.json")
    table.save(tmp_path / "table.json")
    again = load_latency_predictor(tmp_path / "model.json")
    assert isinstance(again, FittedLatencyModel) and again.predict(arch) == pytest.approx(model.predict(arch))
    assert isinstance(load_latency_predictor(tmp_path / "table.json"), LatencyTable)
    with pytest.raises(LatencyTableError, match=r"was fitted for other settings: resolution=32 \(requested 224\)"):
        again.check_fits(space="fbnet", resolution=224, num_classes=100)


def test_without_sources_the_prior_is_macs() -> None:
    archs = sample_archs(10)
    measured = np.array([0.3 + sum(layer_macs(layer) for layer in layer_shapes(a)) / 1e7 for a in archs])
    model = fit_latency_model(SPACE, archs, measured)
    assert model.fit["prior"] == "MACs (no source given)"
    assert model.cross_validation["mape"] < 1e-6


def test_corrupt_model_files(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"schema": "hwnas-latency-model", "schema_version": 1, "space": "fbnet",
                                "resolution": 32, "num_classes": 100, "intercept_ms": 1.0, "entries": {"a": "x"}}))
    with pytest.raises(LatencyTableError, match="'entries' must map layer signatures to finite numbers"):
        load_latency_predictor(path)
    path.write_text("{")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        load_latency_predictor(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_latency_predictor(tmp_path / "none.json")


def test_too_few_measurements() -> None:
    with pytest.raises(MeasurementsError, match="need at least 3 measured architectures, got 2"):
        fit_latency_model(SPACE, sample_archs(2), [1.0, 2.0])


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_fit_and_predict(tmp_path: Path) -> None:
    table, archs = source_table(), sample_archs(12)
    table.save(tmp_path / "source.json")
    rows = [(SPACE.arch_string(arch), f"{2 * table.predict(arch) + 1:.6f}") for arch in archs]
    write_csv(tmp_path / "m.csv", rows)
    runner = CliRunner()
    result = runner.invoke(app, ["latency", "fit", "--space", "fbnet", "--measurements", str(tmp_path / "m.csv"),
                                 "--source", str(tmp_path / "source.json"), "--out", str(tmp_path / "model.json"),
                                 "--device", "phone"])
    assert result.exit_code == 0, result.output
    assert "within ±10% 100%" in result.output
    write_csv(tmp_path / "q.csv", [(rows[0][0], "")], header="arch,comment")
    result = runner.invoke(app, ["latency", "predict", str(tmp_path / "model.json"), "--archs",
                                 str(tmp_path / "q.csv"), "--json"])
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.stdout)
    assert predicted[0]["arch"] == rows[0][0]
    assert predicted[0]["latency_ms"] == pytest.approx(float(rows[0][1]), rel=1e-5)
    bad = write_csv(tmp_path / "bad.csv", [(rows[0][0], "-1")])
    result = runner.invoke(app, ["latency", "fit", "--space", "fbnet", "--measurements", str(bad),
                                 "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "line 2: latency_ms='-1' must be a positive number of ms" in result.output
    result = runner.invoke(app, ["latency", "fit", "--space", "fbnet", "--measurements", str(tmp_path / "m.csv"),
                                 "--source", "hwnasbench:pixel3", "--out", str(tmp_path / "x.json")],
                           env={"HWNAS_SHARED_DATA": ""})
    assert result.exit_code == 2 and "give --hwnasbench FILE" in result.output
    assert not math.isnan(FittedLatencyModel.load(tmp_path / "model.json").cross_validation["mape"])
