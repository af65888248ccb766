"""The search-quality benchmark's own machinery: final trainings cached by (arch, recipe, seed),
Kendall tau with ties, and the paired differences of its results document."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_space import TinySpace

from bench.final_cache import cached_final, recipe_hash
from bench.search_quality_report import results_document
from bench.search_signals import kendall
from nas.training.train import TrainConfig

CONFIG = TrainConfig(epochs=1, batch_size=32, device="cpu", augment="crop-flip")


def test_a_final_training_is_cached_by_arch_recipe_and_seed(tmp_path: Path) -> None:
    arch = TinySpace().all_archs()[0]
    first = cached_final(arch, CONFIG, "synthetic:4", tmp_path, resolution=16)
    assert first["cached"] is False and first["epochs"] == 1 and len(first["val_accuracy_per_epoch"]) == 1
    again = cached_final(arch, CONFIG, "synthetic:4", tmp_path, resolution=16)
    assert again["cached"] is True and again["test_accuracy"] == first["test_accuracy"]
    other_seed = cached_final(arch, TrainConfig(**{**CONFIG.__dict__, "seed": 1}), "synthetic:4", tmp_path,
                              resolution=16)
    assert other_seed["cached"] is False
    assert len(list(tmp_path.glob("*.json"))) == 2
    # the seed is not part of the recipe; any other field, the data or its limit is
    assert recipe_hash(CONFIG, "synthetic:4", None) == recipe_hash(TrainConfig(**{**CONFIG.__dict__, "seed": 5}),
                                                                   "synthetic:4", None)
    assert recipe_hash(CONFIG, "synthetic:4", None) != recipe_hash(CONFIG, "synthetic:4", 100)
    assert recipe_hash(CONFIG, "synthetic:4", None) != recipe_hash(TrainConfig(epochs=1, batch_size=32, device="cpu"),
                                                                   "synthetic:4", None)


def test_kendall_tau_b_with_ties_and_missing_values() -> None:
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == {"tau": pytest.approx(1.0), "p": pytest.approx(1 / 12), "n": 4}
    # a zoo network counted once per seed: its signal ties; tau-b = 5 concordant / sqrt((6 - 1) * 6)
    assert kendall([1, 1, 2, 3], [10, 11, 20, 30])["tau"] == pytest.approx(5 / (6 * 5) ** 0.5)
    assert kendall([None, 1, 2], [5, 6, 7]) == {"tau": None, "p": None, "n": 2}


def test_paired_differences_per_seed_against_random_and_the_zoo() -> None:
    def search(strategy: str, seed: int, test: float) -> dict:
        return {"strategy": strategy, "seed": seed, "search_wall_s": 60.0, "best_val_accuracy": 0.3,
                "final": {"test_accuracy": test, "params": 1, "macs": 2, "wall_s": 3.0,
                          "val_accuracy_per_epoch": [0.2, 0.4]}}

    report = {
        "default_strategy": "band-screen", "baseline": "random", "budget_ms": 1.0,
        "settings": {"seeds": [0, 1], "zoo": ["mobilenet_v2"], "curve_epochs": [], "proxies": []},
        "searches": {"random-s0": search("random", 0, 0.70), "band-screen-s0": search("band-screen", 0, 0.72),
                     "random-s1": search("random", 1, 0.71), "band-screen-s1": search("band-screen", 1, 0.705)},
        "zoo_fits": {"mobilenet_v2": {"width": 0.5}},
        "trained": {"zoo-mobilenet_v2-s0": {"test_accuracy": 0.69, "epochs": 2, "val_accuracy": 0.4, "wall_s": 1.0},
                    "zoo-mobilenet_v2-s1": {"test_accuracy": 0.70, "epochs": 2, "val_accuracy": 0.4, "wall_s": 1.0}},
        "measured": {"random-s0": {"median_ms": 0.9}, "band-screen-s0": {"median_ms": 1.1}},
        "short": {}, "signals": {},
    }
    doc = results_document(report)
    assert [(run["strategy"], run["seed"], run["final_test_acc"]) for run in doc["runs"]] == [
        ("random", 0, 70.0), ("band-screen", 0, 72.0), ("random", 1, 71.0), ("band-screen", 1, 70.5),
        ("zoo:mobilenet_v2", 0, 69.0), ("zoo:mobilenet_v2", 1, 70.0)]
    paired = {p["other"]: p for p in doc["paired"]}
    assert paired["random"]["per_seed"] == {0: pytest.approx(2.0), 1: pytest.approx(-0.5)}
    assert paired["random"]["mean"] == pytest.approx(0.75) and not paired["random"]["positive_every_seed"]
    assert paired["zoo:mobilenet_v2"]["per_seed"] == {0: pytest.approx(3.0), 1: pytest.approx(0.5)}
    assert paired["zoo:mobilenet_v2"]["positive_every_seed"]
    summary = {row["strategy"]: row for row in doc["summary"]}
    assert summary["band-screen"]["mean"] == pytest.approx(71.25)
    assert (summary["band-screen"]["within_budget"], summary["band-screen"]["measured"]) == (0, 1)
    tau = {row["signal"]: row for row in doc["tau"]}
    assert tau["final run's val acc after epoch 1"]["n"] == 4  # the zoo runs here have no per-epoch record
