"""`nas search` on the command line: the tiny space (registered as `tiny` by search_helpers),
the final retrain / test / measurement of the winner, resume checks, latency-budget parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import typer.main
from search_helpers import make_table, read_jsonl, registered
from typer.testing import CliRunner

from nas.cli import app
from nas.commands.search import parse_latency_ms
from predictors.latency import lut_path_for
from nas.search.config import EXECUTION_FIELDS, SETTINGS, SearchConfig, flag_of


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


@pytest.mark.parametrize("text", ["-1ms", "0", "-0.5us"])
def test_a_non_positive_budget_is_named_as_such(text: str) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
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
    # resume: any search setting is refused, even the stored value, naming the flags; execution settings change
    for extra in (["--epochs", "2"], ["--space", "tiny", "--trials", "3", "--no-asha"]):
        refused = CliRunner().invoke(app, ["search", "--resume", str(run), *extra, "--final-epochs", "0"])
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
        flags = ", ".join(flag for flag in extra if flag.startswith("--")).replace("--no-asha", "--asha")
        assert f"{flags}: not allowed with --resume: the run resumes with its config.json" in flat(refused.output)
    resumed = CliRunner().invoke(app, ["search", "--resume", str(run), "--max-failures", "3", "--final-epochs", "0",
                                       "--no-progress", "--train-threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert "3 trials" in flat(resumed.output) and len(read_jsonl(run / "trials.jsonl")) == 3
    assert json.loads((run / "config.json").read_text())["max_failures"] == 3


def test_every_setting_is_an_option_with_the_dataclass_default_and_help() -> None:
    command = typer.main.get_command(app).commands["search"]
    options = {param.opts[0]: param for param in command.params}
    assert set(options) >= {  # every flag `nas search` had before its options came from SearchConfig
        "--space", "--dataset", "--resolution", "--latency-budget", "--lut", "--strategy", "--strategy-options",
        "--trials", "--epochs", "--name", "--seed", "--final-epochs", "--ray", "--ray-address", "--workers",
        "--cpus-per-trial", "--asha", "--backend", "--threads", "--constraint", "--train-limit", "--space-options",
        "--batch-size", "--resume", "--runs-dir", "--progress", "--train-threads", "--time-limit", "--augment"}
    internal = {"num_classes", "train"}  # the dataset's class count; train's fields are listed one by one
    assert {item.name for item in fields(SearchConfig) if item.name not in internal} | {"train.epochs", "train.batch_size", "train.augment"} \
        == set(SETTINGS)
    parsed = {"latency_budget_ms", "lut_path", "space_options", "strategy_options"}  # text -> value by the command
    for name, item in SETTINGS.items():
        option = options[flag_of(name)]
        assert option.help == item.metadata["help"]
        if name not in parsed:
            assert option.default == item.default, name
    assert set(EXECUTION_FIELDS) == {"ray", "ray_address", "workers", "cpus_per_trial", "max_failures", "time_limit"}
    text = flat(CliRunner().invoke(app, ["search", "--help"]).output.replace("│", " "))  # rich's box, wrapped
    for shown in ("mnasnet", "digits", "32", "band-screen", "60", "hard", "no-ray", "1.0", "no-asha", "2", "3", "64"):
        assert f"[default: {shown}]" in text


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


def test_a_flag_the_strategy_does_not_use_is_refused_even_at_its_default(tmp_path: Path) -> None:
    lut = tmp_path / "tiny.json"
    make_table(lut)
    args = _search(tmp_path, lut, "--name", "oneshot") + ["--strategy", "proxyless", "--trials", "60"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert "--trials: not used by the one-shot strategy 'proxyless'" in flat(refused.output)
    assert not (tmp_path / "oneshot").exists()


def test_ctrl_c_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lut = tmp_path / "tiny.json"
    make_table(lut)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("nas.search.runner.run_search", interrupted)
    result = CliRunner().invoke(app, _search(tmp_path, lut, "--name", "cc"))
    assert result.exit_code == 130
    assert f"nas search --resume {tmp_path / 'cc'}" in flat(result.output)


def test_nas_strategies_lists_every_kind_and_its_options_as_json() -> None:
    result = CliRunner().invoke(app, ["strategies", "--json"])
    assert result.exit_code == 0, result.output
    described = {entry["name"]: entry for entry in json.loads(result.output)}
    assert {name: described[name]["kind"] for name in ("evolution", "tpe", "proxyless")} == {
        "evolution": "ask-tell", "tpe": "ask-tell", "proxyless": "one-shot"}
    assert described["evolution"]["options"] == {"population_size": None, "sample_size": 5, "mutation_tries": 32}
    assert "target_ms" not in described["proxyless"]["options"]  # the latency budget, set by the search
    assert described["random"]["options"] == {}
