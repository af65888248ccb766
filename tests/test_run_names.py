"""Run names stay inside --runs-dir, and the demo deletes only a directory it made (issue #19)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.rundir.files import DEMO_MARKER, RunDirError, run_directory


@pytest.mark.parametrize("name", ["../x", "/tmp/elsewhere", "a/b", "", ".", "..", ".hidden", "x" * 129, "a b"])
def test_a_run_name_is_one_plain_path_component(name: str, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="a run name is one path component"):
        run_directory(tmp_path, name)


def test_a_good_name_is_a_directory_under_runs_dir(tmp_path: Path) -> None:
    assert run_directory(tmp_path, "mnasnet-2ms_v1.3").path == tmp_path / "mnasnet-2ms_v1.3"


def test_the_demo_refuses_a_directory_it_did_not_make_and_keeps_its_files(tmp_path: Path) -> None:
    precious = tmp_path / "model"
    precious.mkdir()
    (precious / "config.json").write_text("{}")
    (precious / "pytorch_model.bin").write_bytes(b"weights")
    with pytest.raises(RunDirError, match="is not a demo run"):
        run_directory(tmp_path, "model").replace_demo_run()
    assert sorted(p.name for p in precious.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_the_demo_replaces_its_own_run(tmp_path: Path) -> None:
    run = run_directory(tmp_path, "demo")
    run.replace_demo_run()  # fresh: created with the marker
    (run.path / "trials.jsonl").write_text("{}\n")
    run.replace_demo_run()
    assert sorted(p.name for p in run.path.iterdir()) == [DEMO_MARKER]


@pytest.mark.parametrize("command", [["search", "--latency-budget", "1ms"], ["demo"]])
def test_cli_refuses_names_outside_the_runs_dir_before_any_work(command: list[str], tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    result = CliRunner().invoke(app, [*command, "--name", "../elsewhere", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "--name='../elsewhere': a run name is one path component" in " ".join(result.output.split())
    assert not outside.exists() and not (tmp_path / "runs").exists()
