"""A ProxylessNAS search as a run: its directory, resume after a kill, one trial, and the
settings a one-shot strategy refuses (the reduced space of proxyless_helpers at 8 px)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from proxyless_helpers import CLASSES, RESOLUTION, SmallProxylessSpace, small_table

from nas.oneshot.proxyless import ProxylessSearch
from nas.oneshot.proxyless_strategy import ProxylessSearcher
from nas.rundir.files import RunDirectory, load_weights
from nas.search.config import SearchConfig
from nas.search.runner import run_search
from nas.strategies.base import SearchObjective, StrategyContext
from nas.training.train import TrainConfig
from search_spaces.build import build_model
from search_spaces.errors import OptionError


@pytest.fixture(scope="module")
def space() -> SmallProxylessSpace:
    return SmallProxylessSpace()


@pytest.fixture(scope="module")
def lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_table(tmp_path_factory.mktemp("lut"))


def run_config(lut: Path, **strategy: Any) -> SearchConfig:
    options = {"epochs": 2, "warmup_epochs": 1, "steps_per_epoch": 4, "arch_lr": 0.2, **strategy}
    return SearchConfig(space=SmallProxylessSpace.name, latency_budget_ms=6.0, lut_path=str(lut),
                        dataset=f"synthetic:{CLASSES}", resolution=RESOLUTION, strategy="proxyless",
                        strategy_options=options, train=TrainConfig(epochs=1, batch_size=8, device="cpu"),
                        train_limit=64)


def test_run_directory_and_resume_after_a_kill(lut: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = tmp_path / "straight"
    summary = run_search(run_config(lut), straight, progress=False)
    assert summary.trials == summary.ok == 1 and summary.best is not None
    records = [json.loads(line) for line in (straight / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["result"]["status"] == "ok"
    run = RunDirectory(straight)
    arch = run.read_best_arch()
    assert arch.content_hash() == records[0]["arch_hash"]
    build_model(arch).load_state_dict(load_weights(run.best_weights_path))
    assert run.read_best_metrics().trial_id == 0
    history = json.loads((straight / "proxyless/alpha_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    assert len(history["epochs"][-1]["probabilities"]) == len(history["slots"]) == len(SmallProxylessSpace().decisions)
    assert json.loads((straight / "searcher.json").read_text())["state"]["finished"] is True
    assert sorted(p.name for p in (straight / "proxyless").glob("*.safetensors")) == [
        "optimizers-e0002.safetensors", "supernet-e0002.safetensors"]
    again = run_search(None, straight, resume=True, progress=False)  # finished: nothing retrained
    assert again.best.finished_at == summary.best.finished_at

    killed = tmp_path / "killed"
    original = ProxylessSearch.run_epoch

    def crash_in_epoch_two(self: ProxylessSearch) -> dict:
        if self.epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self)

    monkeypatch.setattr(ProxylessSearch, "run_epoch", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_search(run_config(lut), killed, progress=False)
    assert not (killed / "trials.jsonl").exists()
    monkeypatch.setattr(ProxylessSearch, "run_epoch", original)
    run_search(None, killed, resume=True, progress=False)
    for name in ("proxyless/alpha_history.json", "best/arch.json"):
        ours, theirs = json.loads((killed / name).read_text()), json.loads((straight / name).read_text())
        if name.endswith("history.json"):
            ours, theirs = ([e["probabilities"] for e in h["epochs"]] for h in (ours, theirs))
        assert ours == theirs
    with pytest.raises(ValueError, match="resumes with its config.json"):
        run_search(None, killed, resume=True, progress=False, given={"strategy_options": {"arch_lr": 0.5}})


def test_a_one_shot_run_has_one_trial_and_refuses_ray(lut: Path, tmp_path: Path) -> None:
    summary = run_search(run_config(lut), tmp_path / "run", progress=False)
    assert summary.trials == 1
    assert json.loads((tmp_path / "run/config.json").read_text())["trials"] == 1
    assert (tmp_path / "run/proxyless/alpha_history.json").is_file()
    with pytest.raises(OptionError, match="--ray: not used by the one-shot strategy"):
        run_search(replace(run_config(lut), ray=True), tmp_path / "ray", progress=False)


def test_the_supernet_trains_for_the_runs_epochs_unless_the_options_say_otherwise(space) -> None:
    context = StrategyContext(space, SearchObjective(6.0), seed=3, train=TrainConfig(epochs=1, batch_size=8))
    plain = ProxylessSearcher.from_options(context, {}).options
    assert (plain.epochs, plain.warmup_epochs, plain.batch_size, plain.target_ms, plain.seed) == (1, 0, 8, 6.0, 3)
    assert ProxylessSearcher.from_options(context, {"epochs": 2}).options.epochs == 2
    with pytest.raises(OptionError, match="set by the search"):
        ProxylessSearcher.from_options(context, {"target_ms": 5.0})
    with pytest.raises(OptionError, match=r"\['epoch'\] unknown to 'proxyless'"):
        ProxylessSearcher.from_options(context, {"epoch": 2})


def test_settings_a_one_shot_strategy_does_not_use_are_refused(lut: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"--trials: not used by the one-shot strategy 'proxyless'"):
        run_search(replace(run_config(lut), trials=5), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
