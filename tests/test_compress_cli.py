"""`nas compress` on a tiny trained model: files written, counts as the library computes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.rundir.model_files import load, save
from predictors.cost import count
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model

runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    spec = ArchSpec(
        StemSpec(16),
        (BlockSpec(Op.MBCONV, 16, expand_ratio=4), BlockSpec(Op.MBCONV, 24, stride=2, expand_ratio=4)),
        HeadSpec(conv_channels=64, dropout=0.0),
        resolution=8,
        num_classes=10,
    )
    save(build_model(spec), spec, tmp_path / "model")
    return tmp_path / "model"


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["compress", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_scale_reproduces_efficientnet_b2(tmp_path: Path) -> None:
    out = tmp_path / "b2.json"
    invoke("scale", "zoo:efficientnet_b0", "--width", "1.1", "--depth", "1.2", "--resolution", "260", "--out", str(out))
    spec = ArchSpec.from_json(out.read_text())
    assert spec.resolution == 260
    assert count(spec).params == 9_109_994  # torchvision's efficientnet_b2


def test_scale_by_phi_uses_the_papers_coefficients(tmp_path: Path) -> None:
    out = tmp_path / "phi1.json"
    invoke("scale", "zoo:efficientnet_b0", "--phi", "1", "--out", str(out))
    spec = ArchSpec.from_json(out.read_text())
    assert spec.resolution == 258  # round(224 * 1.15)
    assert spec.stem.out_channels == 32 and spec.head.conv_channels == 1408


def test_scale_needs_exactly_one_mode(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compress", "scale", "zoo:mobilenet_v2", "--phi", "1", "--width", "2",
                                 "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "exactly one of" in result.output


@pytest.mark.parametrize("flag", ["--width", "--depth"])
def test_scale_refuses_a_zero_multiplier_instead_of_ignoring_it(flag: str, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    result = runner.invoke(app, ["compress", "scale", "zoo:mobilenet_v2", flag, "0", "--out", str(out)])
    assert result.exit_code == 2 and f"{flag[2:]}=0.0 must be a finite number > 0" in result.output
    assert not out.exists()


def test_prune_writes_a_smaller_loadable_model(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    invoke("prune", str(model_dir), "--ratio", "0.5", "--dataset", "synthetic", "--epochs", "1",
           "--no-measure", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    pruned = load(out)
    assert metrics["params"][1] == count(pruned.spec).params < metrics["params"][0]
    assert metrics["macs"][1] < metrics["macs"][0]
    assert json.loads((out / "policy.json").read_text())["kind"] == "prune"


def test_quantize_all_8bit_exports_int8_onnx(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8"
    invoke("quantize", str(model_dir), "--bits", "8", "--dataset", "synthetic", "--epochs", "0", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["int8_onnx"] == "model_int8.onnx" and (out / "model_int8.onnx").stat().st_size > 0
    assert (out / "model_fp32.onnx").is_file() and metrics["int8_export_check"]["passed"]
    # 8-bit weights: a quarter of the float32 weight bits, biases stay 32-bit
    assert metrics["weight_bits"] < metrics["weight_bits_fp32"] / 3


def test_quantize_a_zoo_model_without_weights_writes_both_onnx_files(tmp_path: Path) -> None:
    out = tmp_path / "zoo8"
    invoke("quantize", "zoo:mobilenet_v2", "--resolution", "32", "--bits", "8", "--epochs", "0",
           "--calibration", "random", "--no-measure", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] is None and metrics["calibration"] == "random"
    assert json.loads((out / "arch.json").read_text())["resolution"] == 32
    # int8 initializers: the int8 file is under a third of the fp32 one (weights 4x smaller, plus scales)
    assert (out / "model_int8.onnx").stat().st_size < (out / "model_fp32.onnx").stat().st_size / 3
    assert metrics["int8_ort_ops"]["int8"] >= 52 + 10  # every conv QLinearConv, every residual add QLinearAdd


def test_quantize_without_weights_refuses_training(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compress", "quantize", "zoo:mobilenet_v2", "--bits", "8", "--epochs", "1",
                                 "--calibration", "random", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "dataset" in result.output


def test_prune_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compress", "prune", "zoo:mobilenet_v2", "--ratio", "0.5"])
    assert result.exit_code == 2
    assert "no trained weights" in result.output
