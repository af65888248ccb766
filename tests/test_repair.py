"""`nas search --resume RUN --repair` (issue #19, item 3): when a run's files disagree, trials.jsonl
is rebuilt from what best/ and searcher.json prove, the originals are kept, best/ is never
written, and the resumed run ends with the planned number of trials.

The run is the first wave's fixture (`old_run`): evolution, 3 planned trials, all finished; best/
holds trial 0 (val accuracy 0.5, the most any tiny network reaches on this data, so no new trial
can displace it); searcher.json was told [0, 1, 2] and hands out id 3 next."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import old_run_copy, read_jsonl
from test_cli_errors import assert_user_error, invoke

from nas.artifacts.report import top_trials
from nas.rundir.files import RunDirectory, RunDirError
from nas.rundir.repair import repair_run
from nas.rundir.runinfo import read_run
from nas.search.runner import run_search


@pytest.fixture()
def old_run(tmp_path: Path) -> Iterator[Path]:
    """The first wave's 3-trial run (best/ = trial 0), its table beside it."""
    with old_run_copy(tmp_path) as run:
        yield run


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _resume(run: Path, repair: bool = True) -> object:
    return run_search(None, run, resume=True, progress=False, given={"trials": None}, repair=repair)


def _told(run: Path) -> list[int]:
    return json.loads((run / "searcher.json").read_text())["told_trial_ids"]


def _check_consistent(run: Path, ids: list[int], best: dict[str, bytes]) -> None:
    """trials.jsonl holds `ids`, best/ is byte for byte what it was, and the report agrees."""
    assert [r["trial_id"] for r in read_jsonl(run / "trials.jsonl")] == ids
    assert _files(run / "best") == best
    assert sorted(_told(run)) == sorted(ids)
    info = read_run(run)  # what `nas report` and `nas export` read
    assert (len(info.trials), info.planned_trials) == (len(ids), 3)
    assert info.best_metrics.trial_id == top_trials(info)[0].trial_id == 0


def test_trials_jsonl_deleted_is_rebuilt_from_best_and_the_lost_trials_are_trained_anew(old_run: Path) -> None:
    (old_run / "trials.jsonl").unlink()
    best, searcher = _files(old_run / "best"), (old_run / "searcher.json").read_bytes()
    with pytest.raises(RunDirError, match=r"lacks trial\(s\) \[0, 1, 2\].*--resume .* --repair` rebuilds"):
        _resume(old_run, repair=False)

    report = repair_run(RunDirectory(old_run), planned=3)
    assert (report.kept, report.rebuilt, [lost.trial_id for lost in report.lost]) == ((), (0,), [1, 2])
    assert report.lines()[1:] == [
        "  trials.jsonl was missing",
        "  rebuilt trial 0's line from best/metrics.json and best/arch.json",
        "  not rebuilt: trial 1 finished (searcher.json says so) but its result is lost; searcher.json keeps only "
        "its architecture and reward 0.25 (not its accuracy or latency)",
        "  not rebuilt: trial 2 finished (searcher.json says so) but its result is lost; searcher.json keeps only "
        "its architecture and reward 0.25 (not its accuracy or latency)",
        "  best/ (trial 0) is untouched",
        "  trials.jsonl now records 1 of the 3 planned trials: the resumed run trains 2 more, ids from 3 on "
        "(lost trials' ids are not reused)",
    ]
    assert (old_run / "searcher.json.before-repair").read_bytes() == searcher
    assert _told(old_run) == [0]
    rebuilt = read_jsonl(old_run / "trials.jsonl")[0]
    assert rebuilt["result"]["accuracy"] == 0.5 and rebuilt["feasible"] and rebuilt["arch_hash"] == "c38ea727ff34086d"
    assert rebuilt["result"]["extra"] == {"rebuilt_from": "best/metrics.json"}

    assert _resume(old_run, repair=False).trials == 3
    _check_consistent(old_run, [0, 3, 4], best)


def test_a_truncated_trials_jsonl_keeps_its_whole_lines(old_run: Path) -> None:
    raw = (old_run / "trials.jsonl").read_bytes()
    cut = raw.rindex(b"\n", 0, len(raw) - 1) + 1 + 100  # killed 100 bytes into the last line (trial 2)
    (old_run / "trials.jsonl").write_bytes(raw[:cut])
    best = _files(old_run / "best")
    report = repair_run(RunDirectory(old_run), planned=3)
    assert report.dropped == ("line 3: unterminated (100 bytes; killed while appending)",)
    assert [lost.trial_id for lost in report.lost] == [2] and report.next_trial_id == 3
    assert _resume(old_run, repair=False).trials == 3
    _check_consistent(old_run, [0, 1, 3], best)
    assert (old_run / "trials.jsonl.before-repair").read_bytes() == raw[:cut]


def test_best_ahead_of_trials_jsonl_rebuilds_its_line_and_tells_the_searcher(old_run: Path) -> None:
    lines = (old_run / "trials.jsonl").read_text().splitlines()
    (old_run / "trials.jsonl").write_text("\n".join(lines[1:]) + "\n")  # trial 0, the best, lost
    searcher = json.loads((old_run / "searcher.json").read_text())
    searcher["told_trial_ids"] = [1, 2]  # as if the state were saved without it
    (old_run / "searcher.json").write_text(json.dumps(searcher))
    best = _files(old_run / "best")
    report = repair_run(RunDirectory(old_run), planned=3)
    assert (report.kept, report.rebuilt, report.lost) == ((1, 2), (0,), ())
    assert not (old_run / "searcher.json.before-repair").exists()  # searcher.json was right
    # after the lines that score less (0.25 each); before any that scored as well, since the
    # earlier of equals is the best
    assert [r["trial_id"] for r in read_jsonl(old_run / "trials.jsonl")] == [1, 2, 0]
    summary = _resume(old_run, repair=False)
    assert (summary.trials, summary.replayed) == (3, 1)  # the searcher learns trial 0 from its rebuilt line
    _check_consistent(old_run, [1, 2, 0], best)


def test_searcher_json_ahead_names_the_lost_trial_and_trains_one_in_its_place(old_run: Path) -> None:
    lines = (old_run / "trials.jsonl").read_text().splitlines()
    (old_run / "trials.jsonl").write_text("\n".join([lines[0], lines[2]]) + "\n")  # trial 1's line lost
    best = _files(old_run / "best")
    assert _resume(old_run).trials == 3
    _check_consistent(old_run, [0, 2, 3], best)


def test_two_lines_for_one_trial_keep_the_first(old_run: Path) -> None:
    lines = (old_run / "trials.jsonl").read_text().splitlines()
    (old_run / "trials.jsonl").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(RunDirError, match="trial_id 1 appears twice .*--repair` keeps one line per trial"):
        _resume(old_run, repair=False)
    report = repair_run(RunDirectory(old_run), planned=3)
    assert report.dropped == ("line 4: trial 1 again (kept line 2)",)
    assert (old_run / "trials.jsonl").read_text() == "\n".join(lines) + "\n"


def test_a_run_whose_files_agree_is_left_as_it_is(old_run: Path) -> None:
    before = _files(old_run)
    report = repair_run(RunDirectory(old_run), planned=3)
    assert not report.changed
    assert report.lines() == [f"{old_run}: the run files agree (3 trials recorded); nothing to repair"]
    assert _files(old_run) == before


def test_a_best_dir_that_proves_no_trial_is_moved_aside_not_deleted(old_run: Path) -> None:
    (old_run / "trials.jsonl").unlink()
    (old_run / "best" / "metrics.json").unlink()  # killed while best/ was being rewritten
    best = _files(old_run / "best")
    report = repair_run(RunDirectory(old_run), planned=3)
    assert report.best_moved == ("to best.before-repair: it has no metrics.json (the run stopped while saving it), "
                                 "so its trial is unknown")
    assert _files(old_run / "best.before-repair") == best and not (old_run / "best").exists()
    assert report.lines()[-1] == ("  trials.jsonl now records 0 of the 3 planned trials: the resumed run trains 3 "
                                  "more, ids from 3 on (lost trials' ids are not reused)")


def test_repair_is_refused_on_a_new_run(tmp_path: Path) -> None:
    assert_user_error(invoke("search", "--name", "x", "--latency-budget", "5ms", "--repair",
                             "--runs-dir", str(tmp_path)), "--repair", "only with --resume")
    assert not (tmp_path / "x").exists()


def test_cli_repairs_and_resumes(old_run: Path) -> None:
    lines = (old_run / "trials.jsonl").read_text().splitlines()
    (old_run / "trials.jsonl").write_text("\n".join(lines[1:]) + "\n")
    assert_user_error(invoke("search", "--resume", str(old_run), "--final-epochs", "0", "--no-progress"),
                      "trials.jsonl lacks trial(s) [0] that searcher.json records", f"--resume {old_run} --repair")
    result = invoke("search", "--resume", str(old_run), "--repair", "--final-epochs", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 trials (3 ok, 0 failed, 0 over budget)" in " ".join(result.stdout.split())  # rich wraps lines
    assert "rebuilt trial 0's line from best/metrics.json" in result.stdout


def test_repair_waits_its_turn_behind_the_run_lock(old_run: Path) -> None:
    (old_run / "trials.jsonl").unlink()
    before = _files(old_run)
    with RunDirectory(old_run).writing(new=False):  # a search still writing this run
        with pytest.raises(RunDirError, match=r"is being written by process \d+"):
            _resume(old_run)
    assert {name: data for name, data in _files(old_run).items() if name != ".lock"} == before


def test_a_corrupt_line_in_the_middle_is_dropped_and_its_trial_trained_anew(old_run: Path) -> None:
    lines = (old_run / "trials.jsonl").read_text().splitlines()
    lines[1] = lines[1][:40] + "#" + lines[1][41:]  # a flipped byte in trial 1's line
    (old_run / "trials.jsonl").write_text("\n".join(lines) + "\n")
    best = _files(old_run / "best")
    with pytest.raises(RunDirError, match=r"trials.jsonl:2: corrupt trial record .*--repair` drops it"):
        _resume(old_run, repair=False)
    report = repair_run(RunDirectory(old_run), planned=3)
    assert report.dropped[0].startswith("line 2: not JSON (")
    assert [lost.trial_id for lost in report.lost] == [1]
    assert _resume(old_run, repair=False).trials == 3
    _check_consistent(old_run, [0, 2, 3], best)
