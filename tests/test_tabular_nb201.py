"""NAS-Bench-201 as a tabular benchmark: the accuracy oracle (`--dataset nb201:<ds>`), the latency
models (`--lut hwnasbench:<device>` / `help:<device>`), a trial answered from the table, the
in-memory loop and the whole `nas search` command on a few trials.

Reads the shared table (`$HWNAS_SHARED_DATA/nb201/nb201.csv`, default `../shared/data` next to the
repository) and skips when it is absent. Expected values are the table's own, copied from the CSV
(index 0, 6, 10, 9930)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.search.memory import run_in_memory
from nas.search.runner import finalize_best
from nas.search.trial import evaluate_candidate
from nas.strategies.base import Candidate, SearchObjective
from nas.training.data import is_tabular, load_dataset
from nas.training.train import TrainConfig
from predictors.latency import (
    LatencyModel,
    LatencyTable,
    LatencyTableError,
    MissingEntriesError,
    TabularLatencyModel,
    open_latency_model,
)
from predictors.tabular import NB201Dataset
from search_spaces.errors import DatasetError, OptionError, UserError
from search_spaces.spaces import get_space
from search_spaces.spec import ArchSpec

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(os.environ.get("HWNAS_SHARED_DATA", REPO.parent / "shared" / "data")) / "nb201" / "nb201.csv"
pytestmark = pytest.mark.skipif(not TABLE.is_file(), reason=f"needs the shared NB201 table ({TABLE})")

INDEX0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"  # 9930
NO_EDGETPU = "|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"  # 6: connected
DISCONNECTED = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|"  # 10


def spec(arch: str, dataset: str = "cifar10"):
    resolution, classes = {"cifar10": (32, 10), "cifar100": (32, 100), "imagenet16": (16, 120)}[dataset]
    return get_space("nb201", resolution=resolution, num_classes=classes).from_arch_string(arch)


# -- the oracle --------------------------------------------------------------------------------------
def test_known_cells_accuracy_and_cost() -> None:
    cifar10 = NB201Dataset("cifar10")
    answer = cifar10.answer(INDEX0)
    assert answer.accuracy == pytest.approx(0.8586333) and answer.epochs == 200 and answer.train_time_s is None
    assert (answer.params, answer.macs, answer.index) == (129_306, 15_647_360, 0)  # NB201: 0.129306 M, 15.64737 MFLOPs
    assert cifar10.answer(spec(INDEX0)) == answer  # an ArchSpec finds the same row
    assert NB201Dataset("cifar100").answer(spec(BEST, "cifar100")).accuracy == pytest.approx(0.7351333)
    cheap = NB201Dataset("imagenet16", "12ep").answer(BEST)
    assert cheap.accuracy == pytest.approx(0.3763333) and cheap.epochs == 12
    assert cheap.column == "imagenet16_valid_acc_12ep"
    assert cifar10.answer(DISCONNECTED).accuracy == pytest.approx(0.10)  # as the data says: chance
    # a cheaper fidelity on request: the longest recorded schedule within the epochs asked for
    short = NB201Dataset("imagenet16").answer(BEST, epochs=22)
    assert (short.accuracy, short.epochs, short.column) == (cheap.accuracy, 12, "imagenet16_valid_acc_12ep")
    assert NB201Dataset("imagenet16").answer(BEST, epochs=3).epochs == 12  # the shortest when none is within
    assert NB201Dataset("imagenet16", "12ep").answer(BEST, epochs=200).column == "imagenet16_test_acc"


def test_known_cells_latency() -> None:
    pixel3 = open_latency_model("hwnasbench:pixel3")
    assert isinstance(pixel3, TabularLatencyModel)
    assert pixel3.predict(spec(INDEX0)) == pytest.approx(3.60585)
    assert pixel3.predict(spec(INDEX0, "cifar100")) == pytest.approx(5.04007)  # the column follows the data set
    assert open_latency_model("hwnasbench:raspi4").predict(spec(BEST, "cifar100")) == pytest.approx(71.152)
    assert pixel3.predict(spec(BEST, "imagenet16")) == pytest.approx(12.1542)
    assert open_latency_model("help:gold_6226").predict(spec(BEST)) == pytest.approx(16.9543)
    assert open_latency_model("help:pixel2").predict(spec(BEST, "cifar100")) == pytest.approx(34)
    # the budget rule: the 30% quantile of the connected cells on Pixel 3
    assert pixel3.exact_quantile("cifar10", 0.3) == pytest.approx(7.95, abs=0.005)


def test_missing_and_degenerate_latencies_are_refused() -> None:
    with pytest.raises(MissingEntriesError, match="no value"):
        open_latency_model("hwnasbench:edgetpu").predict(spec(NO_EDGETPU))
    with pytest.raises(MissingEntriesError, match="disconnected"):  # the table says 0.0034 ms: degenerate
        open_latency_model("hwnasbench:pixel3").predict(spec(DISCONNECTED))


def test_latency_models_share_one_interface(tmp_path: Path) -> None:
    table = LatencyTable({"backend": "torch"}, space="tiny", resolution=16, num_classes=4)
    table.save(tmp_path / "t.json")
    opened = open_latency_model(str(tmp_path / "t.json"))
    assert isinstance(opened, LatencyTable) and isinstance(opened, LatencyModel)
    assert isinstance(open_latency_model("help:pixel2"), LatencyModel)


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda: open_latency_model("hwnasbench:pixel9"), OptionError, "unknown device"),
    (lambda: open_latency_model("help:nosuch"), OptionError, "unknown device"),
    (lambda: open_latency_model("hwnasbench:pixel3").check_fits(space="mnasnet", resolution=32, num_classes=10),
     LatencyTableError, "NB201"),
    (lambda: open_latency_model("hwnasbench:pixel3").check_fits(space="nb201", resolution=32, num_classes=7),
     LatencyTableError, "no data set"),
    (lambda: open_latency_model("help:pixel2").check_fits(space="nb201", resolution=16, num_classes=120),
     LatencyTableError, "32x32"),
    (lambda: load_dataset("nb201:cifar10", 32), DatasetError, "not images"),
    (lambda: load_dataset("nb201:imagenet16", 32, tabular=True), DatasetError, "--resolution 16"),
    (lambda: load_dataset("nb201:cifar10:3ep", 32, tabular=True), DatasetError, "fidelity"),
    (lambda: load_dataset("nb201:svhn", 32, tabular=True), DatasetError, "unknown data set"),
])
def test_bad_names_are_one_line_user_errors(call, error, words) -> None:
    with pytest.raises(error, match=words) as caught:
        call()
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


# -- a trial answered from the table -------------------------------------------------------------------
def test_a_trial_is_answered_not_trained() -> None:
    data = load_dataset("nb201:cifar10", 32, tabular=True)
    assert is_tabular("nb201:cifar10") and not is_tabular("cifar10:/x.npz")
    model = open_latency_model("hwnasbench:pixel3")
    result, weights = evaluate_candidate(Candidate(0, spec(INDEX0)), data=data, train_config=TrainConfig(),
                                         table=model, objective=SearchObjective(7.95))
    assert weights is None and result.status == "ok"
    assert (result.accuracy, result.latency_ms) == (pytest.approx(0.8586333), pytest.approx(3.60585))
    assert (result.params, result.macs, result.epochs, result.train_time_s) == (129_306, 15_647_360, 200, None)
    assert result.extra == {"tabular": "nb201:cifar10", "table_index": 0, "observed": "cifar10_test_acc"}
    over, _ = evaluate_candidate(Candidate(1, spec(INDEX0)), data=data, train_config=TrainConfig(), table=model,
                                 objective=SearchObjective(3.0))
    assert over.status == "infeasible" and over.accuracy is None
    cut, _ = evaluate_candidate(Candidate(2, spec(DISCONNECTED)), data=data, train_config=TrainConfig(), table=model,
                                objective=SearchObjective(7.95))
    assert cut.status == "failed" and "disconnected" in cut.reason
    cheap, _ = evaluate_candidate(Candidate(3, spec(INDEX0), info={"epochs": 12}), data=data,
                                  train_config=TrainConfig(), table=model, objective=SearchObjective(7.95))
    assert (cheap.epochs, cheap.extra["observed"]) == (12, "cifar10_valid_acc_12ep")


def test_successive_halving_promotes_the_best_cheap_third_to_200_epochs() -> None:
    data = load_dataset("nb201:cifar10", 32, tabular=True)
    model = open_latency_model("hwnasbench:pixel3")
    space = get_space("nb201", resolution=32, num_classes=10)
    trials = run_in_memory("successive-halving", space, SearchObjective(7.95), model, data, trials=12, seed=0,
                           options={"inner": "random"})
    assert [t.result.epochs for t in trials] == [12] * 9 + [200] * 3
    cheap = sorted(trials[:9], key=lambda t: -t.result.accuracy)[:3]
    assert [t.candidate.arch for t in trials[9:]] == [t.candidate.arch for t in cheap]
    assert [t.result.accuracy for t in trials[9:]] == [data.answer(t.candidate.arch).accuracy for t in cheap]


def test_in_memory_search_stays_feasible_and_reads_the_table() -> None:
    data = load_dataset("nb201:cifar10", 32, tabular=True)
    model = open_latency_model("hwnasbench:pixel3")
    space = get_space("nb201", resolution=32, num_classes=10)
    trials = run_in_memory("evolution", space, SearchObjective(7.95), model, data, trials=12, seed=3)
    assert len(trials) == 12 and all(t.feasible for t in trials)
    for trial in trials:
        assert trial.result.accuracy == pytest.approx(data.answer(trial.candidate.arch).accuracy)
        assert trial.result.latency_ms <= 7.95 and trial.ask_s >= 0 and trial.tell_s >= 0
    again = run_in_memory("evolution", space, SearchObjective(7.95), model, data, trials=12, seed=3)
    assert [t.candidate.arch for t in again] == [t.candidate.arch for t in trials]  # seeded


# -- the whole command ------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["random", "evolution", "mnas-rl", "tpe", "nsga2"])
def test_nas_search_on_the_table_writes_a_normal_run(tmp_path: Path, strategy: str) -> None:
    result = CliRunner().invoke(app, [
        "search", "--space", "nb201", "--dataset", "nb201:cifar100", "--lut", "hwnasbench:raspi4",
        "--latency-budget", "20ms", "--strategy", strategy, "--trials", "4", "--seed", "1", "--name", "tab",
        "--runs-dir", str(tmp_path), "--no-progress", "--final-epochs", "3"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "tab"
    config = json.loads((run / "config.json").read_text())
    assert config["lut_path"] == "hwnasbench:raspi4" and config["dataset"] == "nb201:cifar100"
    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 4
    table = NB201Dataset("cifar100")
    raspi4 = open_latency_model("hwnasbench:raspi4")
    for record in records:
        arch = ArchSpec.from_dict(record["candidate"]["arch"])
        assert record["result"]["status"] == "ok" and record["feasible"]
        assert record["result"]["accuracy"] == pytest.approx(table.answer(arch).accuracy)
        assert record["result"]["latency_ms"] == pytest.approx(raspi4.predict(arch))
        assert record["result"]["latency_ms"] <= 20
        assert record["result"]["epochs"] == 200
    best = json.loads((run / "best/metrics.json").read_text())
    assert best["val_accuracy"] == max(r["result"]["accuracy"] for r in records)
    assert best["weights"] is None and best["final_epochs"] is None  # nothing to retrain on a table
    assert "final retraining skipped" in " ".join(result.output.split())
    with pytest.raises(OptionError, match="tabular"):
        finalize_best(run, epochs=1, measurer=None)


def test_tabular_search_refuses_settings_it_cannot_use(tmp_path: Path) -> None:
    for extra in (["--train-limit", "100"], ["--dataset", "nb201:imagenet16"]):
        result = CliRunner().invoke(app, [
            "search", "--space", "nb201", "--dataset", "nb201:cifar10", "--lut", "hwnasbench:pixel3",
            "--latency-budget", "8ms", "--trials", "2", "--name", "x", "--runs-dir", str(tmp_path), "--no-progress",
            *extra])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "x").exists()
