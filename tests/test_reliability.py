"""Faults a user or a crash can cause (issue #19), each refused with one line naming the file or
field and leaving every finished result in place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import old_run_copy
from test_cli_errors import assert_user_error, invoke

from nas.rundir.files import RunDirError
from nas.rundir.model_files import save
from nas.search.runner import run_search
from predictors.size_limits import SizeLimits, SpecTooLargeError, activation_bytes, check_size
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model, zoo

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def old_run(tmp_path: Path) -> Iterator[Path]:
    """The first wave's 3-trial run (best/ = trial 0), its table beside it."""
    with old_run_copy(tmp_path) as run:
        yield run


def _resume(run: Path) -> None:
    run_search(None, run, resume=True, progress=False, given={"trials": None})


# -- resume never overwrites what it cannot explain -------------------------------------------------

def test_resume_with_trials_jsonl_gone_stops_and_keeps_best(old_run: Path) -> None:
    (old_run / "trials.jsonl").unlink()
    best = (old_run / "best" / "weights.safetensors").read_bytes()
    with pytest.raises(RunDirError, match=r"trials.jsonl lacks trial\(s\) \[0, 1, 2\] that searcher.json records"):
        _resume(old_run)
    assert (old_run / "best" / "weights.safetensors").read_bytes() == best


def test_resume_with_best_trials_line_lost_stops(old_run: Path) -> None:
    lines = (old_run / "trials.jsonl").read_text().splitlines()
    (old_run / "trials.jsonl").write_text("\n".join(lines[1:]) + "\n")  # trial 0, the best, lost
    searcher = json.loads((old_run / "searcher.json").read_text())
    searcher["told_trial_ids"] = [1, 2]  # as if only the searcher state were consistent
    (old_run / "searcher.json").write_text(json.dumps(searcher))
    with pytest.raises(RunDirError, match=r"best/ holds trial 0, which trials.jsonl does not record"):
        _resume(old_run)


@pytest.mark.parametrize("state", [[], {"name": "evolution"}, "x"])
def test_resume_with_an_unreadable_searcher_state_names_the_file(old_run: Path, state: object) -> None:
    searcher = json.loads((old_run / "searcher.json").read_text())
    searcher["state"] = state
    (old_run / "searcher.json").write_text(json.dumps(searcher))
    with pytest.raises(RunDirError, match=r"searcher.json: unreadable 'evolution' state .*finished trials are kept"):
        _resume(old_run)


# -- crafted specs are refused before anything is allocated -----------------------------------------

def _huge_spec() -> ArchSpec:
    """Two 20,000-channel MBConvs: 4.8 G parameters, 19 GB of float32 once built."""
    return ArchSpec(StemSpec(16), (BlockSpec(Op.MBCONV, 20_000, expand_ratio=6, kernel=3),
                                   BlockSpec(Op.MBCONV, 20_000, expand_ratio=6)), HeadSpec(conv_channels=64),
                    resolution=32, num_classes=10)


def test_size_bounds_in_closed_form() -> None:
    assert activation_bytes(zoo.get("mobilenet_v2")) == 4 * 96 * 112 * 112  # block 1's expanded 96 x 112 x 112
    check_size(zoo.get("efficientnet_b0"))
    with pytest.raises(SpecTooLargeError, match=r"spec: params 4,804,844,026 exceeds the limit 500,000,000; "
                                                  r"raise it with HWNAS_MAX_PARAMS=N"):
        check_size(_huge_spec())
    with pytest.raises(SpecTooLargeError, match="activation_mb 5 MB exceeds the limit 1 MB"):
        check_size(zoo.get("mobilenet_v2"), SizeLimits(activation_mb=1))


def test_load_refuses_a_huge_arch_before_building_it(tmp_path: Path) -> None:
    small = ArchSpec(StemSpec(16), (BlockSpec(Op.MBCONV, 16, expand_ratio=2),), HeadSpec(conv_channels=32),
                     resolution=16, num_classes=10)
    save(build_model(small), small, tmp_path / "model")
    (tmp_path / "model" / "arch.json").write_text(_huge_spec().to_json())
    assert_user_error(invoke("load", str(tmp_path / "model")), "arch.json", "params 4,804,844,026 exceeds",
                      "HWNAS_MAX_PARAMS")


def test_compress_scale_refuses_a_phi_that_explodes(tmp_path: Path) -> None:
    result = invoke("compress", "scale", "zoo:mobilenet_v2", "--phi", "50", "--out", str(tmp_path / "s.json"))
    assert_user_error(result, "the scaled spec", "exceeds the limit")
    assert not (tmp_path / "s.json").exists()


def test_a_bad_size_limit_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWNAS_MAX_PARAMS", "lots")
    with pytest.raises(SpecTooLargeError, match="HWNAS_MAX_PARAMS='lots': expected a positive number"):
        SizeLimits.from_env()


# -- hand-edited latency tables ---------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    ({"calibration": {"slope": "abc", "intercept_ms": 0.1, "samples": 3}}, r"calibration.slope='abc': expected a finite number"),
    ({"calibration": {"slope": -2.0, "intercept_ms": 0.1, "samples": 3}}, r"calibration.slope=-2.0: expected >= 0"),
    ({"calibration": {"slope": 1.0}}, r"calibration must be an object with slope, intercept_ms, samples"),
    ({"metadata": [1, 2]}, r"'metadata' must be an object, not list"),
])
def test_a_hand_edited_table_is_refused_by_field(tmp_path: Path, edit: dict, message: str) -> None:
    table = json.loads((FIXTURES / "run_v1_lut.json").read_text()) | edit
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(table))
    assert message in assert_user_error(invoke("lut", "info", str(path)), str(path))


def test_a_safetensors_header_length_ending_in_0x80_is_not_taken_for_a_pickle(tmp_path: Path) -> None:
    # this spec's weights file has a 6,016-byte header: 0x1780, first byte 0x80 (pickle's PROTO)
    small = ArchSpec(StemSpec(16), (BlockSpec(Op.MBCONV, 16, expand_ratio=2),), HeadSpec(conv_channels=32),
                     resolution=16, num_classes=10)
    save(build_model(small), small, tmp_path / "model")
    assert (tmp_path / "model" / "weights.safetensors").read_bytes()[:1] == b"\x80"
    assert invoke("load", str(tmp_path / "model")).exit_code == 0


# -- measurements under load say so -----------------------------------------------------------------

def test_other_load_is_the_machines_busy_time_minus_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from predictors.latency import machine_load

    busy, own, wall = iter([10.0, 12.0]), iter([3.0, 3.5]), iter([100.0, 101.0])
    monkeypatch.setattr(machine_load, "_machine_busy_s", lambda: next(busy))
    monkeypatch.setattr(machine_load.time, "process_time", lambda: next(own))
    monkeypatch.setattr(machine_load.time, "perf_counter", lambda: next(wall))
    with machine_load.OtherLoad() as load:
        pass
    assert load.cores == 1.5 and load.busy  # 2 s of machine CPU in 1 s, 0.5 s of it ours


def test_other_load_is_unknown_without_proc_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    from predictors.latency import machine_load

    monkeypatch.setattr(machine_load, "_machine_busy_s", lambda: None)
    with machine_load.OtherLoad() as load:
        pass
    assert load.cores is None and not load.busy


def test_a_search_whose_trials_all_scored_at_chance_says_so(old_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.commands import search as search_command

    printed: list[str] = []
    monkeypatch.setattr(search_command.console, "print", lambda text, *a, **k: printed.append(str(text)))
    search_command._warn_if_indistinguishable(old_run)  # 4 classes, best val accuracy 0.5: a real signal
    assert printed == []
    lines = [json.loads(line) for line in (old_run / "trials.jsonl").read_text().splitlines()]
    for line in lines:
        line["result"]["accuracy"] = 0.25
    (old_run / "trials.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    search_command._warn_if_indistinguishable(old_run)
    assert len(printed) == 1 and "every trial scored near chance (best val accuracy 0.250, chance 0.250)" in printed[0]


def test_resume_with_another_strategys_state_names_both(old_run: Path) -> None:
    searcher = json.loads((old_run / "searcher.json").read_text())
    searcher["strategy"] = "tpe"
    (old_run / "searcher.json").write_text(json.dumps(searcher))
    with pytest.raises(RunDirError, match=r"searcher.json: state of strategy 'tpe', the run uses 'evolution'"):
        _resume(old_run)


def test_a_corrupt_run_config_is_named(old_run: Path) -> None:
    (old_run / "config.json").write_text("{bad")
    assert_user_error(invoke("compress", "quantize", str(old_run), "--bits", "8", "--epochs", "0",
                             "--dataset", "synthetic:2"), "config.json", "not valid JSON")


@pytest.mark.parametrize("other, threads", [(0.0, 4), (1.2, 3), (2.6, 1), (7.5, 1), (None, 4)])
def test_training_threads_are_the_cpus_other_processes_leave_free(monkeypatch: pytest.MonkeyPatch,
                                                                 other: float | None, threads: int) -> None:
    from nas.training import threads as threads_module

    class FakeLoad:
        cores = other

        def __enter__(self) -> FakeLoad:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    monkeypatch.setattr(threads_module, "available_cpus", lambda: 4)
    monkeypatch.setattr(threads_module, "OtherLoad", FakeLoad)
    assert threads_module.fair_threads(sample_s=0) == threads


# -- a table knows its device -----------------------------------------------------------------------

def test_measured_elsewhere_compares_the_tables_device_with_the_measurers() -> None:
    from predictors.latency.provenance import measured_elsewhere

    here = {"device": "vm", "cpu_model": "AMD EPYC"}
    assert measured_elsewhere(here, {**here, "backend": "torch"}) is None
    assert measured_elsewhere({"device": "pixel1", "cpu_model": "Snapdragon 821"}, here) == (
        "the table was measured on pixel1 (Snapdragon 821), this measurer runs on vm (AMD EPYC)")
    agent = {"remote_url": "http://phone:8765"}
    assert measured_elsewhere(agent, here) == (
        "the table was measured on the agent at http://phone:8765, this measurer runs on vm (AMD EPYC)")
    assert measured_elsewhere(agent, {**agent, "device": "phone"}) is None
    assert measured_elsewhere({"source": "proxyless"}, here) == (
        "the table records no measuring device (imported: proxyless)")


def test_lut_validate_refuses_to_store_another_devices_calibration(tmp_path: Path) -> None:
    table = json.loads((FIXTURES / "run_v1_lut.json").read_text())
    table["space"] = "mnasnet"
    table["metadata"] |= {"remote_url": "http://phone:8765", "backend": "onnxruntime"}
    path = tmp_path / "phone.json"
    path.write_text(json.dumps(table))
    before = path.read_text()
    line = assert_user_error(invoke("lut", "validate", str(path), "--samples", "4"), str(path))
    assert "measured on the agent at http://phone:8765" in line and "pass --device URL of that agent" in line
    assert path.read_text() == before
