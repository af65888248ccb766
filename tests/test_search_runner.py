"""The in-process search loop: run-directory layout, best tracking, failed and infeasible trials,
resume (replay of told-but-unsaved trials, torn lines, a real SIGKILL), Optuna storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import (
    CycleSearcher,
    make_table,
    read_jsonl,
    registered,
    tiny_config,
)
from tiny_space import TinySpace
from torch import Tensor, nn

import nas.search.trial
from nas.training.data import load_dataset
from nas.rundir.files import RunDirError, RunDirectory, load_weights
from nas.rundir.records import TrialRecord
from nas.search.config import SearchConfig
from nas.search.runner import run_search
from nas.search.session import SearchSession
from nas.strategies.base import SEARCHERS, Candidate, Result, StrategyContext
from nas.training.train import TrainConfig, evaluate
from predictors.latency import LatencyTable
from search_spaces.build import build_model
from search_spaces.errors import OptionError

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"schema_version", "trial_id", "candidate", "arch_hash", "blocks", "result", "reward", "feasible",
               "finished_at", "executor", "executor_trial_id"}
ARCHS = TinySpace().all_archs()  # latencies 9.2 11.9 9.7 12.9 10.2 13.9 10.7 14.9 ms; budget 13.4 ms


@pytest.fixture(autouse=True)
def _test_registrations() -> Iterator[None]:
    with registered():
        yield


@pytest.fixture(scope="module")
def lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    make_table(path)
    return path


def check_best(run: Path, config: SearchConfig) -> dict:
    """best/ holds the most accurate feasible trial, and its weights reproduce that accuracy."""
    records = read_jsonl(run / "trials.jsonl")
    feasible = [r for r in records if r["feasible"]]
    best = max(feasible, key=lambda r: r["result"]["accuracy"])  # max() keeps the first of equals
    metrics = json.loads((run / "best/metrics.json").read_text())
    assert metrics["trial_id"] == best["trial_id"]
    assert metrics["val_accuracy"] == best["result"]["accuracy"]
    arch = RunDirectory(run).read_best_arch()
    assert arch.content_hash() == best["arch_hash"]
    model = build_model(arch)
    model.load_state_dict(load_weights(run / "best/weights.safetensors"))
    data = load_dataset(config.dataset, config.resolution, seed=config.seed, limit=config.train_limit)
    assert evaluate(model, data.val, device="cpu") == pytest.approx(best["result"]["accuracy"])
    return metrics


def test_local_run_writes_the_full_layout(lut: Path, tmp_path: Path) -> None:
    config = tiny_config(lut, trials=6)
    summary = run_search(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best", "config.json", "searcher.json", "trials.jsonl"]
    assert sorted(p.name for p in (run / "best").iterdir()) == ["arch.json", "metrics.json", "weights.safetensors"]
    stored = RunDirectory(run).read_config()
    assert SearchConfig.from_dict(stored) == SearchConfig.from_dict({**config.to_dict(), "num_classes": 4})
    records = read_jsonl(run / "trials.jsonl")
    assert [r["trial_id"] for r in records] == list(range(6))
    assert all(set(r) == RECORD_KEYS for r in records)
    assert [r["candidate"]["arch"] for r in records] == [CycleSearcher(StrategyContext(TinySpace(), None)).arch_for(i).to_dict()
                                                         for i in range(6)]
    # trial 5 is arch 5 (13.9 ms > 13.4 ms): infeasible, never trained
    assert [r["result"]["status"] for r in records] == ["ok"] * 5 + ["infeasible"]
    state = json.loads((run / "searcher.json").read_text())
    assert state["strategy"] == "test-cycle" and state["told_trial_ids"] == list(range(6))
    assert state["state"]["next_trial_id"] == 6
    assert (summary.trials, summary.ok, summary.infeasible, summary.failed) == (6, 5, 1, 0)
    metrics = check_best(run, config)
    assert summary.best.trial_id == metrics["trial_id"]
    assert metrics["latency_ms"] <= config.latency_budget_ms
    assert metrics["params"] > 0 and metrics["macs"] > 0


def test_a_time_limittops_starting_trials_and_resume_may_extend_it(lut: Path, tmp_path: Path) -> None:
    # a limit shorter than one trial: the first trial still runs (a search always has an answer)
    summary = run_search(tiny_config(lut, trials=6, time_limit=1e-6), tmp_path / "run", progress=False)
    assert (summary.trials, summary.ok) == (1, 1)
    assert summary.best is not None and summary.best.trial_id == 0
    resumed = run_search(None, tmp_path / "run", resume=True, progress=False, given={"time_limit": 3600})
    assert resumed.trials == 6


def test_successive_halving_trains_its_cheap_rung_for_fewer_epochs(lut: Path, tmp_path: Path) -> None:
    train = TrainConfig(epochs=3, batch_size=32, device="cpu", lr=0.1)
    config = tiny_config(lut, trials=4, strategy="successive-halving", train=train,
                         strategy_options={"bracket_size": 3, "inner": "random"})
    run_search(config, tmp_path / "run", progress=False)
    records = read_jsonl(tmp_path / "run" / "trials.jsonl")
    # 3 // 3**2 rounds to 0: the cheap rung is 1 epoch; the best cheap trial is trained again for 3
    assert [r["result"]["epochs"] for r in records] == [1, 1, 1, 3]
    assert [r["candidate"]["info"]["rung"] for r in records] == [0, 0, 0, 1]
    cheap = max(records[:3], key=lambda r: r["result"]["accuracy"])
    assert records[3]["arch_hash"] == cheap["arch_hash"]


class NaNNetwork(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.mean(dim=(2, 3))) * float("nan")


def test_failed_and_infeasible_trials_are_recorded_and_the_search_goes_on(
        lut: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = LatencyTable.load(lut)
    missing = [key for key in table.entries if key.startswith("mb_k5_e3_c16_s1")]  # arch 7's second block
    assert len(missing) == 1
    del table.entries[missing[0]]
    table.save(tmp_path / "holey.json")
    real_build = nas.search.trial.build_model

    def build(arch):  # arch 1 cannot be built; arch 2 trains into NaN
        if arch == ARCHS[1]:
            raise RuntimeError("boom: no such kernel")
        return NaNNetwork(arch.num_classes) if arch == ARCHS[2] else real_build(arch)

    monkeypatch.setattr(nas.search.trial, "build_model", build)
    summary = run_search(tiny_config(tmp_path / "holey.json", budget=13.4, trials=8), tmp_path / "run",
                         progress=False)
    results = {r["candidate"]["info"]["slot"]: r["result"] for r in read_jsonl(tmp_path / "run/trials.jsonl")}
    by_arch = {CycleSearcher.ORDER[slot]: result for slot, result in results.items()}
    assert by_arch[1]["status"] == "failed" and by_arch[1]["reason"] == "RuntimeError: boom: no such kernel"
    assert by_arch[2]["status"] == "failed" and "non-finite loss at epoch 1" in by_arch[2]["reason"]
    assert by_arch[7]["status"] == "failed" and missing[0] in by_arch[7]["reason"]
    assert by_arch[7]["extra"]["missing_keys"] == missing
    infeasible = by_arch[5]
    assert infeasible["status"] == "infeasible" and infeasible["latency_ms"] == pytest.approx(13.9)
    assert infeasible["train_time_s"] is None and infeasible["accuracy"] is None and infeasible["epochs"] is None
    assert "13.900 ms > budget 13.4 ms" in infeasible["reason"]
    assert all(by_arch[i]["status"] == "ok" for i in (0, 3, 4, 6))
    assert (summary.trials, summary.ok, summary.failed, summary.infeasible) == (8, 4, 3, 1)
    assert summary.best.result.accuracy == max(by_arch[i]["accuracy"] for i in (0, 3, 4, 6))


@pytest.mark.parametrize("killed_after", ["ask", "tell"])
def test_resume_replays_trials_the_saved_state_was_not_told(lut: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, killed_after: str) -> None:
    """Rebuild the files as a kill would leave them: trial 2 appended to trials.jsonl, but the
    searcher state on disk is from before (saved after asking trial 2, or after telling trial 1);
    then a torn line from a kill during the next append. Resume must tell trial 2 exactly once."""
    snapshots: list[str] = []
    real_save = SearchSession.save_state

    def save_state(session: SearchSession) -> None:
        real_save(session)
        snapshots.append(session.run_dir.searcher_path.read_text())

    monkeypatch.setattr(SearchSession, "save_state", save_state)
    config = tiny_config(lut, trials=5)
    run = tmp_path / "run"
    run_search(config, run, progress=False)
    monkeypatch.undo()
    lines = (run / "trials.jsonl").read_text().splitlines(keepends=True)
    # the state saved after asking trial 2 has next_trial_id 3; the one after telling trial 1, 2
    wanted = 3 if killed_after == "ask" else 2
    state_text = next(text for text in snapshots
                      if json.loads(text)["told_trial_ids"] == [0, 1]
                      and json.loads(text)["state"]["next_trial_id"] == wanted)
    (run / "searcher.json").write_text(state_text)
    (run / "trials.jsonl").write_text("".join(lines[:3]) + lines[3][:40])  # trial 3 torn mid-append
    summary = run_search(None, run, resume=True, progress=False)
    assert summary.replayed == 1
    records = read_jsonl(run / "trials.jsonl")
    assert [r["trial_id"] for r in records] == [0, 1, 2, 3, 4]
    state = json.loads((run / "searcher.json").read_text())
    assert state["told_trial_ids"] == [0, 1, 2, 3, 4]
    assert state["state"]["told_ids"] == [0, 1, 2, 3, 4]  # the searcher itself heard each trial once
    assert (run / "trials.jsonl.torn").read_text().startswith(lines[3][:40])
    check_best(run, config)


def test_resume_refuses_conflicting_settings(lut: Path, tmp_path: Path) -> None:
    config = tiny_config(lut, trials=2)
    run_search(config, tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match="--resume"):
        run_search(config, tmp_path / "run", progress=False)
    # resume takes config.json: a search setting is refused even at its stored value; None means not given
    for given, named in (({"trials": 3}, "trials"), ({"trials": 2}, "trials"),
                         ({"train.epochs": 2, "seed": None, "max_failures": 1}, "train.epochs")):
        with pytest.raises(OptionError, match=rf"^{named}: not allowed with --resume: .*config.json"):
            run_search(None, tmp_path / "run", resume=True, given=given, progress=False)
    summary = run_search(None, tmp_path / "run", resume=True, given={"max_failures": 5, "trials": None},
                         progress=False)
    assert summary.trials == 2 and summary.replayed == 0
    assert SearchConfig.from_dict(RunDirectory(tmp_path / "run").read_config()).max_failures == 5


def test_config_validation_names_the_field(lut: Path) -> None:
    with pytest.raises(ValueError, match=r"SearchConfig.trials=0: expected an int >= 1"):
        tiny_config(lut, trials=0)
    with pytest.raises(ValueError, match=r"SearchConfig.constraint='firm': expected one of \['hard', 'soft'\]"):
        tiny_config(lut, constraint="firm")
    with pytest.raises(ValueError, match=r"SearchConfig.workers=2: .* Ray"):
        tiny_config(lut, workers=2)
    with pytest.raises(ValueError, match=r"SearchConfig.time_limit=0: expected None or a finite number"):
        tiny_config(lut, time_limit=0)
    with pytest.raises(ValueError, match=r"SearchConfig.time_limit=60: expected None on Ray"):
        tiny_config(lut, time_limit=60, ray=True)
    with pytest.raises(ValueError, match=r"unknown SearchConfig field\(s\) \['budget'\]"):
        SearchConfig.from_dict({"budget": 3})


SEARCH_SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads(1)
import search_helpers
search_helpers.register()
import nas.search.runner
from nas.search.runner import run_search
real = nas.search.runner.evaluate_candidate
def slow(*args, **kwargs):  # slow trials so that the parent can kill the run in the middle
    out = real(*args, **kwargs)
    time.sleep(0.4)
    return out
nas.search.runner.evaluate_candidate = slow
if {resume!r}:
    run_search(None, {run!r}, resume=True, progress=False)
else:
    run_search(search_helpers.tiny_config(search_helpers.Path({lut!r}), trials=8), {run!r}, progress=False)
print(json.dumps({{"ray_imported": "ray" in sys.modules}}))
"""


def _script(lut: Path, run: Path, resume: bool) -> list[str]:
    code = SEARCH_SCRIPT.format(tests=str(ROOT / "tests"), lut=str(lut), run=str(run), resume=resume)
    return [sys.executable, "-c", code]


def test_sigkill_and_resume_finishes_exactly_the_planned_trials(lut: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_script(lut, run, False), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            path = run / "trials.jsonl"
            if path.is_file() and path.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = len(read_jsonl(run / "trials.jsonl"))
    assert 3 <= killed_at < 8
    done = subprocess.run(_script(lut, run, True), cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ray_imported": False}
    records = read_jsonl(run / "trials.jsonl")
    ids = [r["trial_id"] for r in records]
    assert len(records) == 8 and len(set(ids)) == 8
    # at most the one trial in flight at the kill was lost, and its id is never reused
    assert ids == sorted(ids) and max(ids) <= 8
    searcher = CycleSearcher(StrategyContext(TinySpace(), None))
    assert all(r["candidate"]["arch"] == searcher.arch_for(r["trial_id"]).to_dict() for r in records)
    state = json.loads((run / "searcher.json").read_text())
    assert state["told_trial_ids"] == ids and state["state"]["told_ids"] == ids
    check_best(run, SearchConfig.from_dict(RunDirectory(run).read_config()))


def test_optuna_strategy_keeps_its_study_in_the_run(lut: Path, tmp_path: Path) -> None:
    import nas.strategies  # noqa: F401  (registers the built-in strategies)

    if "tpe" not in SEARCHERS:
        pytest.skip("the tpe strategy is not registered in this checkout")
    import optuna

    run = tmp_path / "run"
    summary = run_search(tiny_config(lut, trials=4, strategy="tpe"), run, progress=False)
    assert summary.trials == 4
    study = optuna.load_study(storage=f"sqlite:///{run / 'study.db'}",
                              study_name=json.loads((run / "searcher.json").read_text())["state"]["study_name"])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    numbers = {r["candidate"]["info"]["optuna_number"] for r in read_jsonl(run / "trials.jsonl")}
    assert numbers <= {t.number for t in complete}


def test_trials_file_tolerates_only_a_torn_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunDirectory(tmp_path)

    def record(trial_id: int) -> TrialRecord:
        return TrialRecord(Candidate(trial_id, ARCHS[0]), Result("failed"), reward=0.0, feasible=False)

    run.append_trial(record(0))
    run.append_trial(record(1))
    with open(run.trials_path, "a") as file:
        file.write('{"trial_id": 2, "resu')  # SIGKILL mid-append
    assert [r.trial_id for r in run.read_trials()] == [0, 1]
    assert "torn last line" in caplog.text
    assert run.repair_trials() == len('{"trial_id": 2, "resu')
    run.append_trial(record(2))
    assert [r.trial_id for r in run.read_trials()] == [0, 1, 2]
    lines = run.trials_path.read_text().splitlines()
    run.trials_path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"trials.jsonl:2: corrupt trial record"):
        run.read_trials()


def test_bad_strategy_options_are_refused_before_the_run_directory_exists(lut: Path, tmp_path: Path) -> None:
    config = tiny_config(lut, strategy="evolution", strategy_options={"population": 4})
    with pytest.raises(OptionError, match=r"\['population'\] unknown to 'evolution'; allowed: population_size"):
        run_search(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # the name is not burned: the corrected command may use it


def test_one_writer_per_run_directory(lut: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_search(tiny_config(lut, trials=2), run, progress=False)
    with RunDirectory(run).writing(new=False):  # as if another search held the run
        with pytest.raises(RunDirError, match=rf"is being written by process {os.getpid()}"):
            run_search(None, run, resume=True, progress=False)
    assert len(read_jsonl(run / "trials.jsonl")) == 2  # nothing written by the refused one
    fresh = tmp_path / "fresh"
    with RunDirectory(fresh).writing(new=True):  # two new runs of one name: the second is refused
        with pytest.raises(RunDirError, match="is being written by process"):
            run_search(tiny_config(lut, trials=2), fresh, progress=False)


def test_a_killed_writer_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nas.rundir.files import RunDirectory\n"
        f"with RunDirectory({str(tmp_path / 'run')!r}).writing(new=True):\n"
        "    print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunDirError, match=f"process {holder.pid}"):
        with RunDirectory(tmp_path / "run").writing(new=False):
            pass
    holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the lock
    holder.wait()
    with RunDirectory(tmp_path / "run").writing(new=True):
        pass
