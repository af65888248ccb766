"""A run directory written by the first wave's code (tests/fixtures/run_v1: 3 evolution trials on
the tiny space, config.json, trials.jsonl and metrics.json without a schema_version) keeps
loading, resuming, exporting and reporting after the restructure."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import registered

from nas.artifacts.export import export_run
from nas.artifacts.report import write_report
from nas.rundir.model_files import load
from nas.rundir.runinfo import read_run
from nas.search.runner import run_search

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _tiny_space() -> Iterator[None]:
    with registered():
        yield


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run_v1"
    shutil.copytree(FIXTURES / "run_v1", run)
    lut = shutil.copy(FIXTURES / "run_v1_lut.json", tmp_path / "lut.json")
    config = json.loads((run / "config.json").read_text())
    config["lut_path"] = str(lut)  # the table lived beside the run where it was written
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_an_old_run_reads_with_its_three_trials_and_best(old_run: Path) -> None:
    info = read_run(old_run)
    assert [record.trial_id for record in info.trials] == [0, 1, 2]
    assert info.budget_ms == 13.4
    assert info.best_metrics.trial_id == 0 and info.best_metrics.val_accuracy == 0.5
    assert info.best_arch.content_hash() == "c38ea727ff34086d"


def test_an_old_run_resumes_to_more_trials_keeping_the_finished_ones(old_run: Path) -> None:
    before = (old_run / "trials.jsonl").read_text()
    summary = run_search(None, old_run, resume=True, progress=False, given={"trials": None})
    assert summary.trials == 3 and summary.resumed and summary.replayed == 0
    assert (old_run / "trials.jsonl").read_text() == before


def test_an_old_run_exports_and_reports(old_run: Path, tmp_path: Path) -> None:
    report = export_run(old_run, "json,safetensors,onnx", out=tmp_path / "export", measure=False)
    assert report.result("onnx") is not None
    model = load(tmp_path / "export")
    assert sum(p.numel() for p in model.parameters()) == 1188
    files = write_report(old_run, tmp_path / "report")
    assert all(Path(path).is_file() for path in files.figures)
