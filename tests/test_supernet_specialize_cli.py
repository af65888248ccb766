"""`nas supernet specialize` on the reduced proxyless space (8 px, synthetic data): the model
files `nas load` reads, the predictor fitted once and reused for the next budget, and one-line
errors for a budget below the smallest sub-network and an --out that would clobber."""

from __future__ import annotations

import json
from pathlib import Path

import proxyless_helpers
import pytest
import typer
from typer.testing import CliRunner

from nas.commands import load, supernet, supernet_specialize
from nas.oneshot.elastic_supernet import ElasticSupernet
from predictors.latency import LatencyTable, build_table

assert supernet_specialize.supernet_app is supernet.supernet_app  # importing it registered `specialize` there
runner = CliRunner()
app = typer.Typer()
supernet.register(app)
load.register(app)

TRAIN = ["supernet", "train", "--space", "proxyless-small", "--resolution", "8", "--dataset", "synthetic:4",
         "--train-limit", "64", "--epochs", "1", "--batch-size", "8", "--max-batches-per-epoch", "2",
         "--device", "cpu", "--no-progress"]
SMALL = ["--samples", "6", "--population", "8", "--generations", "3", "--calibration-images", "16",
         "--predictor-hidden", "16", "--predictor-epochs", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float, float]:
    root = tmp_path_factory.mktemp("ofa")
    result = runner.invoke(app, [*TRAIN, "--name", "ofa", "--runs-dir", str(root)])
    assert result.exit_code == 0, result.output
    lut = root / "small.json"
    build_table(proxyless_helpers.SmallProxylessSpace(), proxyless_helpers.FakeMeasurer(), lut)
    net, table = ElasticSupernet(proxyless_helpers.SmallProxylessSpace()), LatencyTable.load(lut)
    return root / "ofa", lut, table.predict(net.smallest()), table.predict(net.largest())


def specialize(run: Path, lut: Path, budget: float, out: Path, *extra: str):
    return runner.invoke(app, ["supernet", "specialize", str(run), "--lut", str(lut), "--latency-budget",
                               f"{budget}ms", "--out", str(out), *SMALL, *extra])


def test_specialize_writes_a_loadable_model_and_reuses_the_predictor(trained, tmp_path: Path) -> None:
    run, lut, low, high = trained
    budget = (low + high) / 2
    first = specialize(run, lut, budget, tmp_path / "a")
    assert first.exit_code == 0, first.output
    assert "after fitting the predictor on 6 sub-networks" in " ".join(first.output.split())
    metrics = json.loads((tmp_path / "a/metrics.json").read_text())
    assert metrics["predicted_latency_ms"] <= budget and metrics["latency_budget_ms"] == pytest.approx(budget)
    assert 0 <= metrics["inherited_accuracy"] <= 1 and metrics["weights"] == "inherited"
    assert metrics["specialize_seconds"] > 0 and metrics["predictor"]["reused"] is False
    loaded = runner.invoke(app, ["load", str(tmp_path / "a")])
    assert loaded.exit_code == 0 and "integrity metadata checked" in loaded.output
    # the next budget: the saved predictor answers, nothing is evaluated again
    second = specialize(run, lut, high, tmp_path / "b")
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b/metrics.json").read_text())["predictor"]["reused"] is True
    assert sorted(p.name for p in (run / "supernet").glob("predictor.*")) == ["predictor.json",
                                                                              "predictor.safetensors"]
    # more samples than the saved predictor had: refitted (the 6 evaluated ones answered from the cache),
    # and a previous output directory of ours may be written again
    third = specialize(run, lut, high, tmp_path / "b", "--samples", "8")
    assert third.exit_code == 0, third.output
    assert json.loads((tmp_path / "b/metrics.json").read_text())["predictor"]["samples"] == 8
    assert len(json.loads((run / "supernet/accuracy_cache.json").read_text())) >= 8


def test_finetune_records_the_accuracy_after_it(trained, tmp_path: Path) -> None:
    run, lut, low, high = trained
    result = specialize(run, lut, high, tmp_path / "ft", "--finetune-epochs", "1")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ft/metrics.json").read_text())
    assert metrics["weights"] == "finetuned" and metrics["finetune_epochs"] == 1
    assert 0 <= metrics["finetuned_test_accuracy"] <= 1


def test_budget_below_the_smallest_and_clobbering_outputs_are_refused(trained, tmp_path: Path) -> None:
    run, lut, low, _ = trained
    below = specialize(run, lut, low / 2, tmp_path / "low")
    assert below.exit_code == 2
    assert f"latency_budget={low / 2:g} ms is below the smallest sub-network" in " ".join(below.output.split())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    busy = specialize(run, lut, low * 2, tmp_path / "busy")
    assert busy.exit_code == 2 and "holds other files (notes.txt)" in " ".join(busy.output.split())
    inside = specialize(run, lut, low * 2, run / "supernet" / "out")
    assert inside.exit_code == 2 and "must lie outside the supernet's directory" in " ".join(inside.output.split())
