"""The typed records of a run directory (`nas.rundir.records`): each round-trips through its JSON,
a file written before the schema_version stamp reads as version 1, and a version this hwnas does
not know is refused with one line naming the file, the version found and the versions it reads
(`error: ...` and exit 2 on the command line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_errors import assert_user_error, invoke
from test_export import BEST_TRIAL, make_run
from tiny_space import TinySpace

from nas.rundir.files import RunDirectory
from nas.rundir.records import BestMetrics, RunDirError, TrialRecord
from nas.strategies.base import Candidate, Result

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"
ARCH = TinySpace().all_archs()[0]  # one block, mb_k3_e1_c16_s2_relu; hash c38ea727ff34086d
RECORD = TrialRecord(Candidate(3, ARCH, info={"origin": "mutation"}),
                     Result("ok", accuracy=0.7, latency_ms=9.2, params=1188, macs=25344, epochs=1),
                     reward=0.7, feasible=True, finished_at="2026-12-01T08:43:34.537+00:00", executor="ray",
                     executor_trial_id="tune_0003")


def through_json(data: dict) -> dict:
    return json.loads(json.dumps(data))


def test_a_trial_record_round_trips_with_the_arch_repeated_for_readers() -> None:
    data = RECORD.to_json()
    assert data["schema_version"] == 1 and data["trial_id"] == 3
    assert data["arch_hash"] == "c38ea727ff34086d" and data["blocks"] == ["mb_k3_e1_c16_s2_relu"]
    assert data["result"]["accuracy"] == 0.7 and data["executor_trial_id"] == "tune_0003"
    assert TrialRecord.from_json(through_json(data)) == RECORD


def test_best_metrics_take_the_trials_figures_and_keep_extras_apart() -> None:
    metrics = BestMetrics.from_trial(RECORD, 13.4, extra={"search_epochs": 3})
    assert (metrics.trial_id, metrics.arch_hash, metrics.blocks) == (3, "c38ea727ff34086d", ("mb_k3_e1_c16_s2_relu",))
    assert (metrics.val_accuracy, metrics.latency_ms, metrics.params, metrics.reward) == (0.7, 9.2, 1188, 0.7)
    assert (metrics.latency_budget_ms, metrics.weights, metrics.weights_from) == (13.4, "weights.safetensors", "trial")
    assert metrics.test_accuracy is None  # no final retrain yet
    data = metrics.to_json()
    assert data["schema_version"] == 2 and data["extra"] == {"search_epochs": 3} and "search_epochs" not in data
    assert BestMetrics.from_json(through_json(data)) == metrics


def test_best_metrics_without_weights_say_so() -> None:
    metrics = BestMetrics.from_trial(RECORD, 13.4, weights_from=None)
    assert metrics.weights is None and metrics.weights_from is None


def test_the_final_retrain_adds_its_figures_and_its_weights() -> None:
    trial = BestMetrics.from_trial(RECORD, 13.4)
    final = trial.finalized({"final_epochs": 10, "test_accuracy": 0.68, "measured_latency_ms": 8.9})
    assert (final.final_epochs, final.test_accuracy, final.measured_latency_ms) == (10, 0.68, 8.9)
    assert final.val_accuracy == 0.7 and final.weights_from == "final"  # the search trial's figure stays
    with pytest.raises(TypeError, match="top1"):
        trial.finalized({"top1": 0.68})  # a figure the record does not know is a bug, not a silent key


def test_version_1_files_without_a_stamp_still_read() -> None:
    run = RunDirectory(FIXTURE)  # written by the first wave's code
    trials = run.read_trials()
    assert [record.trial_id for record in trials] == [0, 1, 2]
    assert trials[0].arch_hash == "c38ea727ff34086d" and trials[0].executor == "local"
    assert run.read_best_metrics().trial_id == 0 and run.read_best_metrics().extra == {}
    assert run.read_config()["space"] == "tiny" and "schema_version" not in run.read_config()


def test_version_1_metrics_move_strategy_keys_into_extra() -> None:
    old = {"trial_id": 0, "arch_hash": "c38ea727ff34086d", "blocks": ["mb_k3_e1_c16_s2_relu"], "val_accuracy": 0.5,
           "strategy": "proxyless", "search_epochs": 3, "demo": {"threads": 1}}
    metrics = BestMetrics.from_json(old)
    assert metrics.val_accuracy == 0.5
    assert metrics.extra == {"strategy": "proxyless", "search_epochs": 3, "demo": {"threads": 1}}


def test_config_json_is_stamped_on_write_and_unwrapped_on_read(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.write_config({"space": "tiny", "trials": 3})
    assert json.loads(run.config_path.read_text()) == {"schema_version": 1, "space": "tiny", "trials": 3}
    assert run.read_config() == {"space": "tiny", "trials": 3}


@pytest.mark.parametrize(("read", "data", "readable"), [
    (TrialRecord.from_json, RECORD.to_json(), "{1}"),
    (BestMetrics.from_json, BestMetrics.from_trial(RECORD, 13.4).to_json(), "{1, 2}"),
])
def test_an_unknown_version_is_refused_naming_it_and_the_readable_ones(read, data: dict, readable: str) -> None:
    with pytest.raises(RunDirError) as error:
        read({**data, "schema_version": 99}, "run/some.json")
    assert str(error.value) == (f"run/some.json: schema_version=99 not in {readable}; "
                                "written by another version of hwnas")


def test_an_unknown_config_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.config_path.write_text(json.dumps({"schema_version": 99, "space": "tiny"}))
    with pytest.raises(RunDirError, match=r"config.json: schema_version=99 not in \{1\}"):
        run.read_config()


def test_a_record_missing_a_field_is_corrupt_naming_it() -> None:
    with pytest.raises(RunDirError, match=r"^best/metrics.json: corrupt best metrics \(KeyError: 'blocks'\)$"):
        BestMetrics.from_json({"schema_version": 2, "trial_id": 0})


@pytest.mark.parametrize("command", [["report"], ["export", "--no-measure", "--format", "json"]])
def test_the_cli_refuses_a_newer_metrics_file_in_one_line(tmp_path: Path, command: list[str]) -> None:
    run = make_run(tmp_path)
    metrics = json.loads((run / "best/metrics.json").read_text())
    assert metrics["trial_id"] == BEST_TRIAL
    (run / "best/metrics.json").write_text(json.dumps({**metrics, "schema_version": 99}))
    result = invoke(command[0], str(run), *command[1:])
    assert_user_error(result, "best/metrics.json", "schema_version=99 not in {1, 2}")
