"""`nas compress deep-compression` and `nas load` on a tiny model: the files, the sizes, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import saved_model
import torch
import typer
from typer.testing import CliRunner

from nas.cli import app
from nas.commands import compress_deep
from nas.commands import load as load_command
from nas.rundir.model_files import load

runner = CliRunner()
assert compress_deep.FILE_NAME == "model.hwdc"  # importing it adds deep-compression to `nas compress`
load_app = typer.Typer()
load_app.callback()(lambda: None)  # keep `load` a sub-command, as under `nas`
load_command.register(load_app)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return saved_model(tmp_path / "model", stem=8, block=16, head=32, stride=2)


def test_deep_compression_writes_a_file_that_loads_back_to_the_same_weights(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dc"
    result = runner.invoke(app, ["compress", "deep-compression", str(model_dir), "--sparsity", "0.75", "--bits", "4",
                                 "--epochs", "1", "--dataset", "synthetic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["sizes"]] == ["fp32", "pruned", "clustered", "huffman"]
    assert metrics["sizes"][3]["bytes"] == metrics["file_bytes"] == (out / "model.hwdc").stat().st_size
    assert metrics["sparsity"] == pytest.approx(0.75, abs=0.002)
    assert set(metrics["accuracy"]) == {"base", "pruned", "pruned_finetuned", "clustered", "clustered_finetuned",
                                        "decoded_file"}
    assert metrics["accuracy"]["decoded_file"] == metrics["accuracy"]["clustered_finetuned"]
    loaded = runner.invoke(load_app, ["load", str(out / "model.hwdc"), "--out", str(tmp_path / "loaded")])
    assert loaded.exit_code == 0, loaded.output
    written, decoded = load(out).state_dict(), load(tmp_path / "loaded").state_dict()
    assert all(torch.equal(written[name], decoded[name]) for name in written)
    # 4-bit layers: at most 16 distinct non-zero values in each conv weight
    assert all(len(torch.unique(t[t != 0])) <= 16 for n, t in decoded.items() if n.endswith("0.weight"))


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.0"], r"--sparsity 1.0: expected a fraction in [0, 1)"),
    (["--bits", "9"], "--bits 9: expected an integer in 1..8"),
    (["--fc-bits", "0"], "--fc-bits 0: expected an integer in 1..8"),
])
def test_bad_options_are_one_line_errors(model_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["compress", "deep-compression", str(model_dir), *args, "--dataset", "synthetic"])
    assert result.exit_code == 2 and message in result.output


def test_unknown_layers_in_the_bits_file_are_named(model_dir: Path, tmp_path: Path) -> None:
    bits_file = tmp_path / "bits.json"
    bits_file.write_text(json.dumps({"head.classifier": 4, "blocks.7.expand.0": 3}))
    result = runner.invoke(app, ["compress", "deep-compression", str(model_dir), "--bits-per-layer", str(bits_file),
                                 "--dataset", "synthetic"])
    assert result.exit_code == 2 and "unknown layer(s) ['blocks.7.expand.0']" in result.output


def test_loading_a_corrupted_file_is_a_one_line_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.hwdc"
    broken.write_bytes(b"HWDC\r\n\x1a\n" + b"\x00" * 4)
    result = runner.invoke(load_app, ["load", str(broken), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "broken.hwdc: truncated: 12 bytes, shorter than the 16-byte preamble" in result.output
    missing = runner.invoke(load_app, ["load", str(tmp_path / "none.hwdc"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "none.hwdc does not exist" in missing.output
