"""Behaviour specific to the strategies that use what is cheap: local search, BANANAS and the
proxy warm start (the contract every strategy meets is in test_strategies.py)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pytest
import torch
from strategy_helpers import run_search
from test_strategies import make, synthetic
from tiny_space import TinySpace

from nas.strategies import BananasSearcher, BandScreenSearcher, LocalSearcher, ProxyWarmSearcher, Result, Searcher
from nas.strategies.base import SearchObjective, StrategyContext
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec


# -- local search ----------------------------------------------------------------------------------
def tiny_landscape(accuracy: dict[tuple[int, ...], float]) -> tuple[TinySpace, SearchObjective, Any]:
    """The tiny space (3 binary decisions), a budget no network exceeds (reward = accuracy) and
    an evaluator reading each vector's accuracy from `accuracy`."""
    space = TinySpace()

    def evaluate(arch: ArchSpec) -> Result:
        return Result(accuracy=accuracy[tuple(int(v) for v in space.encode(arch))], latency_ms=1.0)

    return space, SearchObjective(1000.0), evaluate


def ask_tell(searcher: Searcher, evaluate: Any) -> tuple[list[int], dict[str, Any]]:
    candidate = searcher.ask()
    searcher.tell(candidate, evaluate(candidate.arch))
    return [int(v) for v in searcher.space.encode(candidate.arch)], candidate.info


def test_local_search_moves_to_the_best_neighbour_until_a_local_optimum() -> None:
    """Accuracy grows with the number of ones, plus a local optimum at 000. From 100 (seed 2's
    first draw) the walk asks 100's three neighbours, moves to the better two-ones network, asks
    only its unasked neighbours (100 is known), moves to 111, finds no better neighbour there
    and restarts; told neighbours are never asked again but count."""
    accuracy = {v: 0.4 + 0.1 * sum(v) for v in itertools.product((0, 1), repeat=3)}
    accuracy[(0, 0, 0)] = 0.5
    accuracy[(1, 1, 1)] = 0.9
    space, objective, evaluate = tiny_landscape(accuracy)
    searcher = LocalSearcher(StrategyContext(space, objective, seed=2), num_init=1)
    first, info = ask_tell(searcher, evaluate)
    assert first == [1, 0, 0] and info["origin"] == "random"
    assert searcher.center["vector"] == [1, 0, 0]
    step = [ask_tell(searcher, evaluate) for _ in range(3)]
    assert sorted(v for v, _ in step) == [[0, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert all(i == {"origin": "neighbour", "center_trial_id": 0} for _, i in step)
    second = searcher.center["vector"]
    assert second in ([1, 0, 1], [1, 1, 0]) and searcher.moves == 1
    step = [ask_tell(searcher, evaluate)[0] for _ in range(2)]  # 100 was asked already
    expected = [[1, 1, 1], [0, 1, 0] if second == [1, 1, 0] else [0, 0, 1]]
    assert sorted(step) == sorted(expected)
    assert searcher.center["vector"] == [1, 1, 1] and searcher.moves == 2
    vector, info = ask_tell(searcher, evaluate)  # 111's last unasked neighbour: 011 (0.6)
    assert vector == [0, 1, 1] and info["origin"] == "neighbour"
    assert searcher.center is None and searcher.restarts == 1  # 111 is a local (here global) optimum
    vector, info = ask_tell(searcher, evaluate)
    assert info["origin"] == "restart" and vector in ([0, 0, 1], [0, 1, 0])  # the two never asked
    # all of its neighbours are known: the walk climbs for free (to a two-ones network, then to
    # 111) without asking anything, and restarts again
    assert searcher.moves == 4 and searcher.restarts == 2 and searcher.center is None


def test_local_search_restarts_at_a_local_optimum_and_never_repeats() -> None:
    accuracy = dict.fromkeys(itertools.product((0, 1), repeat=3), 0.5)
    space, objective, evaluate = tiny_landscape(accuracy)
    searcher = LocalSearcher(StrategyContext(space, objective, seed=1), num_init=1)
    start, _ = ask_tell(searcher, evaluate)
    accuracy[tuple(start)] = 0.8  # told 0.5 already; what counts is what the searcher was told
    origins = [ask_tell(searcher, evaluate)[1]["origin"] for _ in range(3)]
    assert origins == ["neighbour"] * 3 and searcher.restarts == 1  # equal is not better
    asked = [start] + [ask_tell(searcher, evaluate)[0] for _ in range(4)]
    assert len({tuple(v) for v in asked}) == 5  # eight networks, none asked twice


def test_local_search_neighbour_subset_and_waiting_draws() -> None:
    space, table = synthetic()
    searcher = LocalSearcher(StrategyContext(space, table.objective, seed=0), num_init=2, neighbours=5)
    run_search(searcher, table, trials=2)
    assert len(searcher.step["todo"]) == 5  # a random 5 of the 30 neighbours
    asked = [searcher.ask() for _ in range(7)]  # nothing told: 5 neighbours, then explore
    assert [c.info["origin"] for c in asked] == ["neighbour"] * 5 + ["waiting"] * 2
    center = space.encode(searcher.space.decode(searcher.center["vector"]))
    assert all(int((space.encode(c.arch) != center).sum()) == 1 for c in asked[:5])
    with pytest.raises(OptionError, match="neighbours=0 must be >= 1"):
        make("local", neighbours=0)


# -- BANANAS ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("acquisition", ["its", "ei"])
def test_bananas_acquisition_prefers_what_its_ensemble_predicts_best(acquisition: str) -> None:
    """Told 30 random networks whose accuracy grows with every option index, the ensemble ranks
    the all-highest network first and the all-lowest last; the acquisition picks the former, and
    an ask takes the pool's candidate of highest acquisition."""
    space, _ = synthetic()

    def evaluate(arch: ArchSpec) -> Result:
        return Result(accuracy=0.3 + 0.015 * int(space.encode(arch).sum()), latency_ms=1.0)

    context = StrategyContext(space, SearchObjective(1000.0), seed=0)
    searcher = BananasSearcher(context, num_init=30, acquisition=acquisition)
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    run_search(searcher, evaluate, trials=30)
    rng = np.random.default_rng(5)
    vectors = [[0] * 10] + [[int(v) for v in rng.integers(0, 4, 10)] for _ in range(10)] + [[3] * 10]
    value, mean, spread = searcher.acquisition(vectors)
    assert int(np.argmax(mean)) == 11 and int(np.argmin(mean)) == 0
    assert int(np.argmax(value)) == 11
    assert mean[11] == pytest.approx(0.3 + 0.015 * 30, abs=0.1)  # an extrapolation, roughly right

    pool = [(vector, space.decode(vector), "test") for vector in vectors]
    searcher.candidate_pool = lambda: pool  # the ask takes the pool's best acquisition value
    candidate = searcher.ask()
    assert [int(v) for v in space.encode(candidate.arch)] == [3] * 10
    assert candidate.info["predicted"] == pytest.approx(mean[11], abs=0.02) and candidate.info["pool"] == 12
    assert torch.equal(torch.random.get_rng_state(), torch_state)  # the global RNGs are left alone
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_bananas_pool_is_unasked_feasible_mutations_and_random_ones() -> None:
    space, table = synthetic()
    feasible = lambda arch: arch.blocks[0].kernel == 3
    searcher = BananasSearcher(StrategyContext(space, table.objective, seed=3, is_feasible=feasible), num_init=4)
    run_search(searcher, table, trials=6)
    assert searcher.fits == [4, 5]  # trained at the 5th and 6th ask, on what was told by then
    asked = {vector for vector, _ in [(tuple(v), r) for v, r in searcher.told]}
    pool = searcher.candidate_pool()
    assert 0 < len(pool) <= 5 * 8 + 10
    assert all(feasible(arch) and tuple(vector) not in asked for vector, arch, _ in pool)
    assert len({arch.content_hash() for _, arch, _ in pool}) == len(pool)
    parents = [np.array(v) for v, _ in searcher.told]
    for vector, _, origin in pool:
        if origin == "mutation":
            assert min(int((np.array(vector) != parent).sum()) for parent in parents) == 1
    with pytest.raises(OptionError, match="acquisition='ucb' not in"):
        make("bananas", acquisition="ucb")


# -- proxy warm start -------------------------------------------------------------------------------
def test_proxy_warm_asks_the_top_scored_candidates_first_in_score_order() -> None:
    """The context's score ranks the pool: the first `warm_start` asks are its best, best first;
    evolution continues with the warm trials as its population (tournaments at once)."""
    space, table = synthetic()
    scored: list[tuple[str, float]] = []

    def score(arch: ArchSpec) -> float:  # any deterministic function: here, a pseudo-random one
        value = int(arch.content_hash()[:8], 16) / 16**8
        scored.append((arch.content_hash(), value))
        return value

    feasible = lambda arch: arch.blocks[0].kernel == 3
    context = StrategyContext(space, table.objective, seed=4, is_feasible=feasible, trials=24, score=score)
    searcher = ProxyWarmSearcher(context, pool_size=200)
    assert searcher.warm_start == 6  # evolution's population for 24 trials
    infos: list[dict[str, Any]] = []
    history = run_search(searcher, table, trials=10, infos=infos)
    assert len(scored) == len({key for key, _ in scored}) > 150  # distinct candidates, each scored once
    best_six = sorted(scored, key=lambda item: -item[1])[:6]
    assert [arch.content_hash() for arch, _ in history[:6]] == [key for key, _ in best_six]
    assert [(i["origin"], i["rank"], i["score"]) for i in infos[:6]] == [
        ("proxy", rank, value) for rank, (_, value) in enumerate(best_six)]
    assert infos[0]["proxy"] == "context" and infos[0]["scored"] == len(scored) and infos[0]["score_seconds"] >= 0
    assert all(i["origin"] == "mutation" and i["then"] == "evolution" for i in infos[6:])
    assert [member[0] for member in searcher.inner.population] == list(range(4, 10))  # aged as usual
    assert all(feasible(arch) for arch, _ in history)


def test_proxy_warm_falls_back_to_params_and_continues_with_local_search() -> None:
    from predictors.cost import params_of_spec

    space, table = synthetic()
    searcher = ProxyWarmSearcher(StrategyContext(space, table.objective, seed=0), pool_size=100, warm_start=3,
                                 then="local")
    infos: list[dict[str, Any]] = []
    history = run_search(searcher, table, trials=5, infos=infos)
    params = [params_of_spec(arch) for arch, _ in history[:3]]
    assert [i["score"] for i in infos[:3]] == params and params == sorted(params, reverse=True)
    assert infos[0]["proxy"] == "params"
    rewards = [table.objective.reward(result) for _, result in history[:3]]
    center = searcher.inner.center  # the best warm trial is the first incumbent
    assert center["trial_id"] == int(np.argmax(rewards)) and center["reward"] == max(rewards)
    assert [i["origin"] for i in infos[3:]] == ["neighbour", "neighbour"]
    with pytest.raises(OptionError, match="then='tpe' not in"):
        make("proxy-warm", then="tpe")


def test_proxy_warm_scores_with_a_named_zero_cost_proxy_on_the_runs_images() -> None:
    """proxy="nwot": each pool network scored by NASWOT on one fixed batch of the run's training
    images; the warm asks are those networks in score order, and their scores are reproducible."""
    from nas.strategies.proxy_score import proxy_scorer
    from nas.training.data import load_dataset

    space, table = synthetic()
    data = load_dataset("synthetic:4", space.resolution, seed=0)
    searcher = ProxyWarmSearcher(StrategyContext(space, table.objective, seed=1, data=data), pool_size=12,
                                 warm_start=3, proxy="nwot")
    infos: list[dict[str, Any]] = []
    history = run_search(searcher, table, trials=3, infos=infos)
    again = proxy_scorer("nwot", data, seed=1, resolution=space.resolution, num_classes=space.num_classes)
    assert [i["score"] for i in infos] == [again(arch) for arch, _ in history]
    assert [i["score"] for i in infos] == sorted((i["score"] for i in infos), reverse=True)
    assert infos[0]["proxy"] == "nwot"
    with pytest.raises(OptionError, match=r"proxy='nwot' needs training images"):
        ProxyWarmSearcher(StrategyContext(space, table.objective, seed=1), proxy="nwot")
    with pytest.raises(OptionError, match="unknown zero-cost proxy 'bogus'; registered: fisher"):
        make("proxy-warm", proxy="bogus")


def test_band_screen_ranks_only_architectures_using_90_percent_of_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    space, table = synthetic()
    budget = table.objective.latency_budget_ms
    feasible = lambda arch: table.predict(arch) <= budget
    searcher = BandScreenSearcher(StrategyContext(space, table.objective, seed=2, is_feasible=feasible, table=table),
                                  pool_size=40, warm_start=5)
    infos: list[dict[str, Any]] = []
    history = run_search(searcher, table, trials=5, infos=infos)
    assert all(0.9 * budget <= result.latency_ms <= budget for _, result in history)
    assert searcher.scored == 40 and [i["rank"] for i in infos] == [0, 1, 2, 3, 4]
    assert [i["score"] for i in infos] == sorted((i["score"] for i in infos), reverse=True)  # params, best first
    plain = ProxyWarmSearcher(StrategyContext(space, table.objective, seed=2, is_feasible=feasible, table=table),
                              pool_size=40, warm_start=5)
    assert min(result.latency_ms for _, result in run_search(plain, table, trials=40)) < 0.9 * budget
    with pytest.raises(OptionError, match=r"band=1.0 must be in \[0, 1\)"):
        make("band-screen", band=1.0)
    with pytest.raises(OptionError, match="needs the run's latency model"):
        BandScreenSearcher(StrategyContext(space, table.objective, seed=2))
    below_band = lambda arch: table.predict(arch) <= 0.8 * budget  # a pre-check stricter than the budget
    with caplog.at_level(logging.WARNING, logger="nas.strategies.proxy_warm"):
        history = run_search(BandScreenSearcher(StrategyContext(space, table.objective, seed=2, is_feasible=below_band,
                                                                table=table), pool_size=10), table, trials=3)
    assert "none of 200 feasible random architectures is predicted at >= band=0.9 x the budget; ranking 10" \
        in caplog.text
    assert all(result.latency_ms <= 0.8 * budget for _, result in history)


def test_band_screen_pool_is_large_when_scores_are_free_and_small_when_computed() -> None:
    space, table = synthetic()
    context = StrategyContext(space, table.objective, seed=0, table=table)
    assert BandScreenSearcher(context).options.pool_size == 300  # no images: #params, free
    scored = StrategyContext(space, table.objective, seed=0, table=table, score=lambda arch: 0.0)
    assert BandScreenSearcher(scored).options.pool_size == 300
    from nas.training.data import load_dataset

    data = load_dataset("synthetic:4", space.resolution, seed=0)
    with_images = StrategyContext(space, table.objective, seed=0, table=table, data=data)
    searcher = BandScreenSearcher(with_images)
    assert (searcher.options.pool_size, searcher.proxy) == (100, "nwot")  # NASWOT costs a forward pass each


def test_successive_halving_brackets_promote_the_best_third_by_cheap_reward() -> None:
    from nas.strategies import SuccessiveHalvingSearcher
    from nas.training.train import TrainConfig

    space, table = synthetic()
    context = StrategyContext(space, table.objective, seed=1, train=TrainConfig(epochs=20))
    searcher = SuccessiveHalvingSearcher(context, bracket_size=6, eta=3, inner="random")
    assert (searcher.low_epochs, searcher.full_epochs) == (2, 20)  # 20 // 3**2
    infos: list[dict[str, Any]] = []
    history = run_search(searcher, table, trials=8, infos=infos)
    assert [i["epochs"] for i in infos] == [2] * 6 + [20] * 2
    assert [i.get("origin") for i in infos[6:]] == ["promoted", "promoted"]
    rewards = [table.objective.reward(result) for _, result in history[:6]]
    best_two = sorted(range(6), key=lambda index: -rewards[index])[:2]
    assert [arch for arch, _ in history[6:]] == [history[index][0] for index in best_two]
    with pytest.raises(OptionError, match=r"bracket_size=2 must be >= eta \(3\)"):
        SuccessiveHalvingSearcher(context, bracket_size=2)
    with pytest.raises(OptionError, match="gives no training epochs nor a tabular schedule"):
        SuccessiveHalvingSearcher(StrategyContext(space, table.objective, seed=1))
