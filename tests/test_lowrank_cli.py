"""`nas compress lowrank` on a tiny model: the files it writes, and one-line errors (exit 2) on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.policy import PolicyEnvelope
from nas.cli import app
from nas.commands.compress_lowrank import lowrank as lowrank_command
from nas.rundir.model_files import load, save
from predictors.cost import count
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model

runner = CliRunner()
assert lowrank_command  # importing the module registers `compress lowrank` (until nas.commands imports it)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    spec = ArchSpec(StemSpec(16), (BlockSpec(Op.MBCONV, 16, expand_ratio=4), BlockSpec(Op.RESBLOCK, 24, stride=2)),
                    HeadSpec(conv_channels=64, dropout=0.0), resolution=8, num_classes=10)
    torch.manual_seed(0)
    save(build_model(spec), spec, tmp_path / "model")
    return tmp_path / "model"


def lowrank(*args: str):
    return runner.invoke(app, ["compress", "lowrank", *args])


def test_energy_writes_an_ordinary_smaller_model(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lr"
    result = lowrank(str(model_dir), "--energy", "0.5", "--method", "tucker2", "--dataset", "synthetic",
                     "--epochs", "1", "--no-measure", "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    model = load(out)
    assert metrics["macs"][1] == count(model.spec).macs < metrics["macs"][0]
    policy = PolicyEnvelope.load(out / "policy.json", "lowrank")
    assert policy.settings == {"method": "tucker2", "energy": 0.5}
    assert len(policy.layers["blocks.1.conv_a"]) == 2  # a 3x3 conv gets [r_in, r_out]
    assert metrics["skipped"]["blocks.0.depthwise"].startswith("is a grouped conv")


def test_ranks_file_is_applied_as_written(model_dir: Path, tmp_path: Path) -> None:
    ranks = tmp_path / "ranks.json"
    PolicyEnvelope("lowrank", {"head.conv": 4, "blocks.1.conv_b": [3, 5]}).save(ranks)
    result = lowrank(str(model_dir), "--ranks", str(ranks), "--dataset", "synthetic", "--epochs", "0",
                     "--no-measure", "--out", str(tmp_path / "lr"))
    assert result.exit_code == 0, result.output
    spec = load(tmp_path / "lr").spec
    assert dict(spec.head.ranks) == {"conv": (4,)} and dict(spec.blocks[1].ranks) == {"conv_b": (3, 5)}


@pytest.mark.parametrize("layers, message", [
    ({"head.conv": 0}, "head.conv=0 out of range; allowed: ranks in [1, 24]"),
    ({"head.conv": 25}, "head.conv=25 out of range; allowed: ranks in [1, 24]"),
    ({"blocks.7.expand": 2}, "unknown layer 'blocks.7.expand'"),
    ({"blocks.0.depthwise": 2}, "layer 'blocks.0.depthwise' is a grouped conv"),
    ({"head.classifier": [2, 2]}, "Tucker-2 ranks need a k x k conv"),
])
def test_bad_ranks_fail_with_one_line_naming_the_layer(model_dir: Path, tmp_path: Path, layers: dict,
                                                        message: str) -> None:
    ranks = tmp_path / "ranks.json"
    PolicyEnvelope("lowrank", layers).save(ranks)
    result = lowrank(str(model_dir), "--ranks", str(ranks), "--dataset", "synthetic", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--energy", "0"], "--energy=0.0 must be in (0, 1]"),
    (["--energy", "1.5"], "--energy=1.5 must be in (0, 1]"),
    (["--energy", "0.9", "--method", "cp"], "--method='cp' not in {svd, tucker2}"),
    (["--latency-budget", "1ms"], "--latency-budget needs --lut TABLE"),
    ([], "give exactly one of --energy, --latency-budget (with --lut) or --ranks"),
])
def test_bad_options_exit_2(model_dir: Path, tmp_path: Path, args: list, message: str) -> None:
    result = lowrank(str(model_dir), *args, "--dataset", "synthetic", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and message in result.output


def test_latency_budget_is_met_on_the_predicted_latency(model_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import predictors.latency
    from predictors.cost import layer_macs
    from predictors.latency import LatencyTable, Measurement
    from search_spaces.build import layer_shapes

    class MacsMeasurer:  # a pretend device: 1 ms per 10k MACs, so the test needs no timing
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def measure_layers(self, layers: list) -> list[Measurement]:
            return [Measurement(layer_macs(layer) / 1e4, layer_macs(layer) / 1e4, layer_macs(layer) / 1e4, 1)
                    for layer in layers]

    monkeypatch.setattr(predictors.latency, "LocalMeasurer", MacsMeasurer)
    LatencyTable({"backend": "onnxruntime"}).save(tmp_path / "lut.json")
    full_ms = sum(layer_macs(layer) for layer in layer_shapes(load(model_dir).spec)) / 1e4
    out = tmp_path / "lr"
    result = lowrank(str(model_dir), "--latency-budget", f"{0.8 * full_ms:.4f}ms", "--lut", str(tmp_path / "lut.json"),
                     "--dataset", "synthetic", "--epochs", "0", "--no-measure", "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["predicted_ms_before"] == pytest.approx(full_ms)
    assert metrics["predicted_ms_after"] <= 0.8 * full_ms
    assert count(load(out).spec).macs / 1e4 == pytest.approx(metrics["predicted_ms_after"])
