"""`--strategy once-for-all` as a run: supernet, predictor, specialisation, the one trial, export
(the reduced proxyless space of proxyless_helpers at 8 px, synthetic data, seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from proxyless_helpers import CLASSES, RESOLUTION, SmallProxylessSpace, small_table

from nas.artifacts.export import export_run
from nas.rundir.files import RunDirectory
from nas.rundir.model_files import load
from nas.search.config import SearchConfig
from nas.search.runner import run_search
from nas.strategies.base import SEARCHERS
from nas.training.train import TrainConfig
from predictors.latency import LatencyTable
from search_spaces.errors import OptionError

TINY = {"supernet_epochs": 1, "max_batches_per_epoch": 2, "samples": 6, "calibration_images": 16,
        "predictor_epochs": 20, "predictor_hidden": 16, "predictor_members": 2, "predictor_folds": 3,
        "population": 8, "generations": 3}


@pytest.fixture(scope="module")
def lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_table(tmp_path_factory.mktemp("lut"))


def run_config(lut: Path, budget: float, **options: Any) -> SearchConfig:
    return SearchConfig(space=SmallProxylessSpace.name, latency_budget_ms=budget, lut_path=str(lut),
                        dataset=f"synthetic:{CLASSES}", resolution=RESOLUTION, strategy="once-for-all",
                        strategy_options={**TINY, **options},
                        train=TrainConfig(epochs=1, batch_size=8, device="cpu"), train_limit=64)


def budget_between_smallest_and_largest(lut: Path) -> float:
    from nas.oneshot.elastic_supernet import ElasticSupernet

    supernet, table = ElasticSupernet(SmallProxylessSpace()), LatencyTable.load(lut)
    low, high = table.predict(supernet.smallest()), table.predict(supernet.largest())
    assert low < high
    return (low + high) / 2


def test_once_for_all_writes_a_normal_run_with_the_specialised_network(lut: Path, tmp_path: Path) -> None:
    budget = budget_between_smallest_and_largest(lut)
    summary = run_search(run_config(lut, budget), tmp_path / "run", progress=False)
    assert summary.trials == summary.ok == 1
    run = RunDirectory(tmp_path / "run")
    record = json.loads((tmp_path / "run/trials.jsonl").read_text().splitlines()[0])
    specialized = tmp_path / "run/supernet/specialized"
    metrics = json.loads((specialized / "metrics.json").read_text())
    # the trial is the specialised network, within the budget under the run's table
    assert record["arch_hash"] == run.read_best_arch().content_hash() == load(specialized).spec.content_hash()
    assert metrics["predicted_latency_ms"] <= budget and record["result"]["latency_ms"] <= budget
    assert 0 <= metrics["inherited_accuracy"] <= 1 and metrics["predictor"]["samples"] == 6
    assert record["candidate"]["info"]["inherited_accuracy"] == metrics["inherited_accuracy"]
    # the trial fine-tunes the inherited weights rather than a fresh initialisation
    assert Path(record["candidate"]["info"]["initial_weights"]) == specialized.resolve()
    assert sorted(p.name for p in (tmp_path / "run/supernet").glob("predictor.*")) == [
        "predictor.json", "predictor.safetensors"]
    state = json.loads((tmp_path / "run/searcher.json").read_text())["state"]
    assert state["finished"] is True and state["supernet_epoch"] == 1
    report = export_run(tmp_path / "run", "safetensors", measure=False)  # its winner exports like any other
    assert load(report.out_dir).spec.content_hash() == record["arch_hash"]
    again = run_search(None, tmp_path / "run", resume=True, progress=False)  # finished: nothing redone
    assert again.best.finished_at == summary.best.finished_at


def test_strategy_is_listed_with_its_options_and_refuses_unknown_ones() -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    result = CliRunner().invoke(app, ["strategies", "--json"])
    described = {entry["name"]: entry for entry in json.loads(result.output)}["once-for-all"]
    assert described["kind"] == "one-shot" and described["options"]["samples"] == 200
    with pytest.raises(OptionError, match="strategy_options.samples=1"):
        SEARCHERS.get("once-for-all").Options(samples=1)
    with pytest.raises(OptionError, match="strategy_options.sampling='each'"):
        SEARCHERS.get("once-for-all").Options(sampling="each")


def test_a_trial_with_initial_weights_starts_from_them_and_refuses_another_architecture(tmp_path: Path) -> None:
    import torch

    from nas.rundir.model_files import save
    from nas.search.trial import _initial_model
    from nas.strategies.base import INITIAL_WEIGHTS, Candidate
    from search_spaces.build import build_model

    space = SmallProxylessSpace()
    arch, other = space.decode([0] * len(space.decisions)), space.decode([1] * len(space.decisions))
    model = build_model(arch)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.25)
    save(model, arch, tmp_path / "inherited")
    started = _initial_model(Candidate(0, arch, info={INITIAL_WEIGHTS: str(tmp_path / "inherited")}), seed=0)
    assert all(torch.equal(p, torch.full_like(p, 0.25)) for p in started.parameters())
    fresh = _initial_model(Candidate(0, arch), seed=0)
    assert not all(torch.equal(p, torch.full_like(p, 0.25)) for p in fresh.parameters())
    with pytest.raises(ValueError, match="another architecture"):
        _initial_model(Candidate(0, other, info={INITIAL_WEIGHTS: str(tmp_path / "inherited")}), seed=0)
