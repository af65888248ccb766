"""`nas compress slim` on a tiny model: penalised training, channels removed, fine-tuned; bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import saved_model
from typer.testing import CliRunner

from nas.cli import app
from nas.rundir.model_files import load
from predictors.cost import count

runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return saved_model(tmp_path / "model", stem=16, block=16, head=32, expand=4)


def test_slim_prunes_by_bn_gamma_after_penalised_training(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "slim"
    result = runner.invoke(app, ["compress", "slim", str(model_dir), "--bn-l1", "1e-3", "--ratio", "0.5",
                                 "--epochs", "1", "--dataset", "synthetic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["criterion"] == "bn"
    assert metrics["params"][1] == count(load(out).spec).params < metrics["params"][0]
    assert metrics["changed_widths"]["blocks.0"] == [64, 32]  # the MBConv's inner width, halved


@pytest.mark.parametrize("args, message", [
    ([], "give --bn-l1 or --group-lasso > 0"),
    (["--bn-l1", "-1"], "TrainConfig.bn_l1=-1.0: expected a finite float >= 0"),
    (["--group-lasso", "1e-4", "--ratio", "1.0"], "ratio=1.0: expected a fraction in (0, 0.9]"),
])
def test_bad_input_exits_2_naming_the_field(model_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["compress", "slim", str(model_dir), *args, "--dataset", "synthetic"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
