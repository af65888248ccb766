"""`nas compress lottery` on a tiny model: tickets, masks and rows written; bad plans refused by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import saved_model
from safetensors.torch import load_file
from typer.testing import CliRunner

from nas.cli import app
from nas.rundir.model_files import load

runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return saved_model(tmp_path / "model", stem=8, block=8, head=16)


def test_lottery_writes_tickets_masks_and_every_control(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lottery"
    result = runner.invoke(app, ["compress", "lottery", str(model_dir), "--sparsity", "0.5,0.8", "--rewind-steps", "1",
                                 "--epochs", "1", "--scope", "global", "--dataset", "synthetic:10",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rewound_to_step"] == 1
    assert [(r["sparsity"], r["method"]) for r in metrics["rows"]] == [
        (s, m) for s in (0.5, 0.8) for m in ("rewind", "reinit", "scratch", "finetune")]
    ticket = load(out / "ticket_0.80")
    masks = load_file(str(out / "ticket_0.80" / "masks.safetensors"))
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == round(total * 0.2)  # global scope: exactly 20% of the conv/linear weights survive
    zeros = sum(int((ticket.state_dict()[name] == 0).sum()) for name in masks)
    assert zeros >= total - kept


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "0.5,1.0"], "sparsity=1.0: expected fractions in [0, 1)"),
    (["--sparsity", "0.8,0.5"], "expected a strictly increasing list"),
    (["--sparsity", "half"], "sparsity='half': expected comma-separated fractions"),
    (["--rounds", "0"], "rounds=0: expected an int >= 1"),
    (["--rewind-steps", "-1"], "rewind_steps=-1: expected an int >= 0"),
])
def test_bad_plans_exit_2_naming_the_field(model_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["compress", "lottery", str(model_dir), *args, "--dataset", "synthetic"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
