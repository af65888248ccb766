"""Compound scaling: the paper's phi = 1 step on B0 with exact per-stage repeats and channels,
torchvision's EfficientNet-B1..B3 parameter counts reproduced exactly, and the phi searches."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torchvision

from compress.scale import (
    compound_coefficients,
    compound_scale,
    fit_phi_to_budget,
    grid_search_coefficients,
    round_filters,
    scale_spec,
    stages,
)
from predictors.cost import macs_of_spec
from search_spaces import zoo
from search_spaces.build import build_model

torch.set_num_threads(1)

B0 = zoo.get("efficientnet_b0", 224, 1000)


def per_stage(spec) -> list[tuple[int, int]]:
    return [(len(stage), spec.blocks[stage.start].out_channels) for stage in stages(spec)]


def test_stages_are_recovered_from_the_block_list() -> None:
    assert per_stage(B0) == [(1, 16), (2, 24), (2, 40), (3, 80), (3, 112), (4, 192), (1, 320)]
    assert [len(s) for s in stages(zoo.get("mobilenet_v2"))] == [1, 2, 3, 4, 3, 3, 1]


def test_round_filters_is_torchvisions_make_divisible() -> None:
    assert [round_filters(c, 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320, 1280)] == [
        32, 16, 24, 48, 88, 120, 208, 352, 1408]
    assert round_filters(38, 0.5) == 24  # 19 -> 16 would lose more than 10%: one step up
    assert round_filters(4, 0.5) == 8  # never below the divisor
    assert round_filters(116, 1.0) == 116  # width 1.0 is the identity


def test_phi_1_with_the_paper_coefficients_on_b0() -> None:
    depth, width, factor = compound_coefficients(1.2, 1.1, 1.15, 1)
    assert (depth, width, factor) == (1.2, 1.1, 1.15)
    scaled = compound_scale(B0, 1.2, 1.1, 1.15, 1)
    # ceil(n * 1.2) repeats per stage; round_filters(c * 1.1) channels
    assert per_stage(scaled) == [(2, 16), (3, 24), (3, 48), (4, 88), (4, 120), (5, 208), (2, 352)]
    assert scaled.stem.out_channels == 32 and scaled.head.conv_channels == 1408
    assert scaled.resolution == 258  # round(224 * 1.15 = 257.6)
    # the added blocks repeat the stage's block at stride 1; stage openers keep their stride
    assert [b.stride for b in scaled.blocks[:5]] == [1, 1, 2, 1, 1]
    assert scaled.blocks[1] == replace(scaled.blocks[0], stride=1)


@pytest.mark.parametrize("name,width,depth,resolution", [
    ("efficientnet_b1", 1.0, 1.1, 240),
    ("efficientnet_b2", 1.1, 1.2, 260),
    ("efficientnet_b3", 1.2, 1.4, 300),
])
def test_published_coefficients_reproduce_torchvision_exactly(name: str, width: float, depth: float,
                                                              resolution: int) -> None:
    scaled = scale_spec(B0, width=width, depth=depth, resolution=resolution)
    ours = sum(p.numel() for p in build_model(scaled).parameters())
    reference = sum(p.numel() for p in getattr(torchvision.models, name)(weights=None).parameters())
    assert ours == reference
    assert ours == {"efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994, "efficientnet_b3": 12_233_232}[name]
    assert scaled.resolution == resolution


def test_depth_below_one_factor_resolution_and_identity() -> None:
    smaller = scale_spec(B0, 1.0, 0.5, 0.5)
    assert [len(s) for s in stages(smaller)] == [1, 1, 1, 2, 2, 2, 1] and smaller.resolution == 112
    shuffle = zoo.get("shufflenet_v2_x1_0")
    assert scale_spec(shuffle).content_hash() == shuffle.content_hash()
    with pytest.raises(ValueError, match="width=0"):
        scale_spec(B0, width=0)


def test_compound_constraint_is_checked() -> None:
    with pytest.raises(ValueError, match=r"alpha \* beta\^2 \* gamma\^2 = 8\.000 is not within 10% of 2"):
        compound_coefficients(2.0, 1.0, 2.0, 1)
    with pytest.raises(ValueError, match="beta=0.9 must be >= 1"):
        compound_coefficients(1.2, 0.9, 1.15, 1)
    assert compound_coefficients(2.0, 1.0, 2.0, 2, tolerance=None) == (4.0, 1.0, 4.0)
    depth, width, factor = compound_coefficients(1.2, 1.1, 1.15, 0.5)
    assert math.isclose(depth * width**2 * factor**2, math.sqrt(1.2 * 1.1**2 * 1.15**2))


def test_grid_search_spends_the_same_budget_on_every_candidate() -> None:
    base = zoo.get("efficientnet_b0", 32, 10)
    calls = []

    def evaluate(spec) -> float:  # stand-in accuracy preferring depth, then resolution
        calls.append(spec.content_hash())
        return len(spec.blocks) + spec.resolution / 1000

    result = grid_search_coefficients(base, evaluate, alphas=(1.0, 1.2, 1.8), betas=(1.0, 1.1))
    assert len(calls) == len(set(calls))  # networks that round alike are evaluated once
    for trial in result.trials:
        assert math.isclose(trial["alpha"] * trial["beta"] ** 2 * trial["gamma"] ** 2, 2.0)
        assert trial["gamma"] >= 1.0
    assert (result.alpha, result.beta) == (1.8, 1.0)
    assert result.accuracy == max(t["accuracy"] for t in result.trials)
    assert len(result.trials) == 5  # (1.8, 1.1): 1.8 * 1.21 > 2 would need gamma < 1


def test_fit_phi_picks_the_largest_phi_under_the_budget() -> None:
    class MacsAsMilliseconds:  # anything with .predict(spec), like a LatencyTable
        def predict(self, spec) -> float:
            return macs_of_spec(spec) / 1e8

    predictor = MacsAsMilliseconds()
    budget = predictor.predict(compound_scale(B0, 1.2, 1.1, 1.15, 1.0)) + 1e-9
    fit = fit_phi_to_budget(B0, 1.2, 1.1, 1.15, predictor, budget, phi_max=2.0)
    assert fit.latency_ms <= budget and fit.phi >= 1.0
    assert all(ms > budget for phi, ms in fit.tried if phi > fit.phi)
    assert len(fit.tried) == 21
    plain = fit_phi_to_budget(B0, 1.2, 1.1, 1.15, predictor.predict, budget, phi_max=2.0)  # a callable works too
    assert plain.phi == fit.phi
    smallest = predictor.predict(B0)  # phi_min = 0
    with pytest.raises(ValueError, match="no phi in"):  # close: every grid point is tried
        fit_phi_to_budget(B0, 1.2, 1.1, 1.15, predictor, smallest / 1.2, phi_max=1.0)
    asked: list[float] = []
    with pytest.raises(ValueError, match=r"budget_ms=0.001 ms is out of reach: the smallest scaling \(phi=0.0\)"):
        fit_phi_to_budget(B0, 1.2, 1.1, 1.15, lambda spec: asked.append(1) or predictor.predict(spec), 0.001,
                          phi_max=1.0)
    assert len(asked) == 1  # hopeless: said after the first prediction, not the whole grid
