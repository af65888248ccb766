"""`nas search` on the command line: the tiny space (registered as `tiny` by search_helpers),
the final retrain / test / measurement of the winner, resume checks, latency-budget parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import make_table, read_jsonl, registered
from typer.testing import CliRunner

from nas.cli import app
from nas.commands.search import lut_path_for, parse_latency_ms


@pytest.fixture(autouse=True)
def _test_registrations() -> Iterator[None]:
    with registered():
        yield


@pytest.mark.parametrize(("text", "ms"), [("6ms", 6.0), ("6", 6.0), ("0.5ms", 0.5), ("500us", 0.5),
                                          ("0.006s", 6.0), (" 2.5 ms ", 2.5), ("1e1ms", 10.0)])
def test_latency_budget_accepts_units(text: str, ms: float) -> None:
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["6 parsecs", "ms", "-1ms", "0ms", "6 mss", ""])
def test_latency_budget_rejects_bad_values(text: str) -> None:
    with pytest.raises(ValueError, match="--latency-budget"):
        parse_latency_ms(text)


def test_lut_path_names_the_machine_and_settings() -> None:
    path = lut_path_for("mnasnet", 32, 10, "onnxruntime", 1, {}, Path("runs/luts"))
    assert path.parent == Path("runs/luts") and path.name.startswith("mnasnet_r32_c10_onnxruntime_t1_")
    restricted = lut_path_for("mnasnet", 32, 10, "onnxruntime", 1, {"ops": ["mbconv"]}, Path("runs/luts"))
    assert restricted != path and restricted.name.startswith("mnasnet_r32_c10_o")


def flat(output: str) -> str:
    return " ".join(output.split())  # rich wraps lines at the terminal width


def _search(runs: Path, lut: Path, *extra: str) -> list[str]:
    return ["search", "--space", "tiny", "--dataset", "synthetic:4", "--resolution", "16", "--latency-budget",
            "13.4ms", "--lut", str(lut), "--strategy", "test-cycle", "--trials", "3", "--epochs", "1",
            "--train-limit", "96", "--runs-dir", str(runs), "--no-progress", *extra]


def test_cli_search_retrains_tests_and_measures_the_best(tmp_path: Path) -> None:
    lut = tmp_path / "tiny.json"
    make_table(lut)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, _search(runs, lut, "--name", "cli", "--final-epochs", "1"))
    assert result.exit_code == 0, result.output
    run = runs / "cli"
    assert len(read_jsonl(run / "trials.jsonl")) == 3
    metrics = json.loads((run / "best/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["final_epochs"] == 1
    assert metrics["measured_latency_ms"] > 0 and metrics["measured_with"]["backend"] == "torch"
    assert metrics["predicted_latency_ms"] == metrics["latency_ms"]
    assert metrics["weights_from"] == "final" and (run / "best/weights.safetensors").is_file()
    for label in ("test accuracy (final)", "latency predicted (table)", "latency measured (end to end)",
                  "3 trials"):
        assert label in flat(result.output)
    # resume: conflicting settings are refused naming the field; matching ones are fine
    conflict = CliRunner().invoke(app, ["search", "--resume", str(run), "--epochs", "2", "--final-epochs", "0",
                                        "--no-progress"])
    assert conflict.exit_code == 2 and "train.epochs=2 (the run has 1)" in flat(conflict.output)
    resumed = CliRunner().invoke(app, ["search", "--resume", str(run), "--trials", "3", "--final-epochs", "0",
                                       "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "3 trials" in flat(resumed.output) and len(read_jsonl(run / "trials.jsonl")) == 3


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    lut = tmp_path / "tiny.json"
    make_table(lut)
    bad = CliRunner().invoke(app, _search(tmp_path, lut, "--name", "x") + ["--latency-budget", "6 parsecs"])
    assert bad.exit_code == 2 and "--latency-budget='6 parsecs'" in flat(bad.output)
    unknown = CliRunner().invoke(app, ["search", "--space", "nope", "--latency-budget", "5", "--lut", str(lut),
                                       "--name", "y", "--runs-dir", str(tmp_path), "--no-progress"])
    assert unknown.exit_code == 2 and "unknown search space 'nope'" in flat(unknown.output)
    missing = CliRunner().invoke(app, ["search", "--space", "tiny", "--no-progress"])
    assert missing.exit_code == 2 and "--name and --latency-budget required" in flat(missing.output)
