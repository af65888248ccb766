"""`nas compress quantize --search --latency-budget MS --lut TABLE`: HAQ's latency mode from the
command line -- the policy within the predicted budget, then measured end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.haq_latency import LayerLatencyTable
from compress.haq_measure import layer_names
from nas.cli import app
from nas.rundir.model_files import load, save
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model

runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """Stem, a residual MBConv, a stride-2 MBConv, head conv, classifier: 10 layers at 8 px."""
    blocks = (BlockSpec(Op.MBCONV, 16, expand_ratio=4), BlockSpec(Op.MBCONV, 24, stride=2, expand_ratio=4))
    spec = ArchSpec(StemSpec(16), blocks,
                    HeadSpec(conv_channels=64, dropout=0.0), resolution=8, num_classes=10)
    save(build_model(spec), spec, tmp_path / "model")
    return tmp_path / "model"


def _table(model_dir: Path, path: Path) -> LayerLatencyTable:
    names = layer_names(load(model_dir), (1, 3, 8, 8))
    table = LayerLatencyTable(tuple(names), tuple(0.1 for _ in names), tuple(0.15 for _ in names), "test numbers")
    table.save(path)
    return table


def test_latency_search_writes_a_policy_within_budget_and_measures_it(model_dir: Path, tmp_path: Path) -> None:
    table = _table(model_dir, tmp_path / "table.json")
    budget = 0.1 * len(table.layers) + 0.12  # room for two layers kept fp32
    out = tmp_path / "q"
    result = runner.invoke(app, ["compress", "quantize", str(model_dir), "--search", "--latency-budget", str(budget),
                                 "--lut", str(tmp_path / "table.json"), "--episodes", "3", "--epochs", "0",
                                 "--dataset", "synthetic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    mode = metrics["latency_mode"]
    assert mode["haq"]["predicted_ms"] <= budget
    assert len(mode["haq"]["fp32_layers"]) <= 2
    assert mode["uniform_int8"]["predicted_ms"] == sum(table.int8_ms)
    assert all(mode[k]["measured_ms"] > 0 for k in ("fp32", "haq", "uniform_int8"))
    assert mode["haq"]["export_check"]["passed"] and mode["prediction_source"].startswith("predicted by layer_cost")
    assert metrics["search"]["budget"] == {"kind": "latency_ms", "value": budget,
                                           "cost_source": mode["prediction_source"]}
    assert (out / "model_int8.onnx").is_file()


def test_latency_budget_errors_name_the_fix(model_dir: Path, tmp_path: Path) -> None:
    _table(model_dir, tmp_path / "table.json")
    common = ["compress", "quantize", str(model_dir), "--episodes", "1", "--epochs", "0", "--dataset", "synthetic",
              "--out", str(tmp_path / "q"), "--lut", str(tmp_path / "table.json")]
    result = runner.invoke(app, [*common, "--search", "--latency-budget", "0.01"])
    assert result.exit_code == 2 and "latency_budget_ms=0.01 is below the minimum" in result.output
    result = runner.invoke(app, [*common, "--bits", "8", "--latency-budget", "1"])
    assert result.exit_code == 2 and "add --search" in result.output


def test_lut_must_hold_int8() -> None:
    from test_int8_table import FP32_V1

    from nas.commands.quantize_latency import load_cost
    from search_spaces.errors import UserError

    with pytest.raises(UserError, match=r"holds precision\(s\) fp32, not int8; add it with `nas lut build --precision int8`"):
        load_cost(FP32_V1)
