"""`nas supernet train|evaluate` on the reduced proxyless space (8 px, synthetic data): a run
directory with the checkpoint, resume with the recorded settings, inherited accuracies as JSON
(the second evaluation answered from the cache), and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import proxyless_helpers
from typer.testing import CliRunner

from nas.commands import supernet
from nas.rundir.model_files import load
from nas.training.data import load_dataset
from nas.training.train import evaluate as accuracy_of

assert proxyless_helpers.SmallProxylessSpace.name == "proxyless-small"  # imported: the space is registered
runner = CliRunner()
app = typer.Typer()
supernet.register(app)
app.command("unused")(lambda: None)  # a second command keeps `supernet` a sub-command

TRAIN = ["supernet", "train", "--space", "proxyless-small", "--resolution", "8", "--dataset", "synthetic:4",
         "--train-limit", "64", "--epochs", "2", "--batch-size", "8", "--max-batches-per-epoch", "2",
         "--device", "cpu", "--no-progress"]


def test_train_resume_and_evaluate(tmp_path: Path) -> None:
    runs = ["--runs-dir", str(tmp_path)]
    first = runner.invoke(app, [*TRAIN, "--name", "ofa", *runs])
    assert first.exit_code == 0, first.output
    assert "trained to epoch 2" in first.output
    checkpoint = tmp_path / "ofa" / "supernet"
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 2
    again = runner.invoke(app, [*TRAIN, "--name", "ofa", *runs])
    assert again.exit_code == 2 and "already holds a supernet; continue it with --resume" in again.output
    resumed = runner.invoke(app, ["supernet", "train", "--name", "ofa", "--resume", "--no-progress", *runs])
    assert resumed.exit_code == 0 and "trained to epoch 2" in resumed.output  # nothing left to do
    refused = runner.invoke(app, ["supernet", "train", "--name", "ofa", "--resume", "--epochs", "3", *runs])
    assert refused.exit_code == 2 and "--epochs: a resumed supernet keeps its settings" in refused.output

    evaluate = ["supernet", "evaluate", str(tmp_path / "ofa"), "--samples", "2", "--calibration-images", "16",
                "--device", "cpu", "--json"]
    result = runner.invoke(app, evaluate)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 2 and all(0 <= row["accuracy"] <= 1 and row["epoch"] == 2 for row in rows)
    cache = json.loads((checkpoint / "accuracy_cache.json").read_text())
    assert {row["arch_hash"] for row in rows} == set(cache)
    assert json.loads(runner.invoke(app, evaluate).output) == rows

    spec = tmp_path / "arch.json"
    spec.write_text(json.dumps(rows[0]["arch"]))
    out = tmp_path / "sub"
    extracted = runner.invoke(app, ["supernet", "extract", str(tmp_path / "ofa"), "--arch", str(spec), "--out",
                                    str(out), "--calibration-images", "16", "--device", "cpu"])
    assert extracted.exit_code == 0, extracted.output
    model = load(out)  # ordinary model files: arch.json + weights.safetensors
    assert model.spec.content_hash() == rows[0]["arch_hash"]
    data = load_dataset("synthetic:4", 8, seed=0, limit=64)
    assert f"val accuracy {accuracy_of(model, data.val, device='cpu'):.4f}" in extracted.output


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad_name = runner.invoke(app, [*TRAIN, "--name", "a/b", "--runs-dir", str(tmp_path)])
    assert bad_name.exit_code == 2 and "a run name is one path component" in bad_name.output
    uncovered = runner.invoke(app, [*TRAIN, "--name", "x", "--space", "nb201", "--runs-dir", str(tmp_path)])
    assert uncovered.exit_code == 2 and "space='nb201' is not covered; covered spaces: proxyless" in uncovered.output
    missing = runner.invoke(app, ["supernet", "evaluate", str(tmp_path / "none"), "--samples", "1"])
    assert missing.exit_code == 2 and "no supernet/run.json" in missing.output
