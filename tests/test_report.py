"""`nas report`: the figures and index.html render for a finished run, a run in progress (torn
last trial line, no best/, no searcher.json) and a run without trials."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from test_export import BEST_TRIAL, make_run  # the run-directory builder, shared
from typer.testing import CliRunner

from nas.cli import app
from nas.artifacts.report import FIGURES, top_trials, write_report
from nas.rundir.runinfo import read_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature: a valid, nonempty PNG."""
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC and raw[12:16] == b"IHDR" and raw.endswith(b"IEND\xaeB`\x82"), path
    return struct.unpack(">II", raw[16:24])


def check_report(directory: Path) -> str:
    html = (directory / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources == list(FIGURES)  # relative links, one per figure
    for name in FIGURES:
        width, height = png_size(directory / name)
        assert width >= 600 and height >= 400
    return html


def test_report_of_a_finished_run(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    files = write_report(run)
    assert files.directory == run / "report"
    html = check_report(files.directory)
    assert "Top trials" in html and "8 finished of 12: 6 ok, 1 infeasible, 1 failed" in html
    assert "best/arch.json" in html and "5 layers" in html
    info = read_run(run)
    top = top_trials(info)
    assert top[0].trial_id == BEST_TRIAL  # feasible first, then by accuracy: 0.74 is over budget
    assert [r.trial_id for r in top[:3]] == [3, 6, 2] and top[-1].trial_id == 5
    first_row = html.split("<tr><td>")[1]
    assert first_row.startswith(f"{BEST_TRIAL}</td><td>ok</td><td>yes</td><td>70.00</td>")


def test_report_of_a_run_in_progress(tmp_path: Path) -> None:
    run = make_run(tmp_path, finished=False)
    assert not (run / "best").exists() and not (run / "trials.jsonl").read_bytes().endswith(b"\n")
    files = write_report(run, tmp_path / "elsewhere")
    html = check_report(tmp_path / "elsewhere")
    assert "best/ does not exist yet" in html and "in progress" in html
    assert "trial 3 (best feasible so far; best/ not written yet)" in html  # stands in for best/
    assert "99</td>" not in html  # the torn line is not a trial
    assert files.index == tmp_path / "elsewhere" / "index.html"


def test_report_of_a_run_without_trials_or_table(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"space": "tiny", "latency_budget_ms": 2.0,
                                                  "lut_path": "missing.json", "trials": 5}))
    html = check_report(write_report(run).directory)
    assert "no trained trial yet" in html and "latency table &#x27;missing.json&#x27;" in html


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        write_report(tmp_path)


def test_cli_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output and (run / "report" / "layer_latency.png").is_file()
