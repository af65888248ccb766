"""ProxylessNAS: supernet layout, path binarization (counted with forward hooks), the two-path
gradient estimator, both loss terms, convergence to the table's fastest network, derivation and
epoch checkpoints (the run directory: test_proxyless_run.py). A reduced proxyless space at 8 px
keeps it fast."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from proxyless_helpers import CLASSES, RESOLUTION, SmallProxylessSpace, small_table

from nas.oneshot.checkpoint import load_checkpoint, save_checkpoint
from nas.oneshot.layout import LayoutError, layout_for_space
from nas.oneshot.proxyless import ProxylessConfig, ProxylessSearch, latency_loss
from nas.oneshot.supernet import LatencyModel, Supernet, gate_gradient_to_alpha
from nas.training.data import load_dataset
from predictors.latency import Calibration, LatencyTable
from search_spaces.build import build_model, layer_shapes
from search_spaces.spaces.mnasnet import MnasNetSpace
from search_spaces.spaces.proxyless import ProxylessSpace
from search_spaces.spec import ArchSpec
from search_spaces.supernet_plan import Slot, SupernetPlan


@pytest.fixture(scope="module")
def space() -> SmallProxylessSpace:
    return SmallProxylessSpace()


@pytest.fixture(scope="module")
def lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_table(tmp_path_factory.mktemp("lut"))


@pytest.fixture(scope="module")
def table(lut: Path) -> LatencyTable:
    return LatencyTable.load(lut)


@pytest.fixture(scope="module")
def data():
    return load_dataset(f"synthetic:{CLASSES}", RESOLUTION, seed=0, limit=64)


def config(**changes: Any) -> ProxylessConfig:
    base = {"target_ms": 6.0, "epochs": 2, "warmup_epochs": 0, "batch_size": 8, "steps_per_epoch": 4, "device": "cpu"}
    return ProxylessConfig(**{**base, **changes})


def count_forwards(model: Supernet) -> dict[tuple[int, int], int]:
    """(layer, option) -> forward calls, via hooks on every candidate module."""
    counts: dict[tuple[int, int], int] = {}
    for l, layer in enumerate(model.layers):
        for o, candidate in enumerate(layer.candidates):
            def hook(*_: Any, key: tuple[int, int] = (l, o)) -> None:
                counts[key] = counts.get(key, 0) + 1
            candidate.register_forward_hook(hook)
    return counts


# -- layout ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    SmallProxylessSpace,
    lambda: ProxylessSpace(resolution=RESOLUTION, num_classes=CLASSES, width_mult=0.5),
    lambda: MnasNetSpace(resolution=RESOLUTION, num_classes=CLASSES, width_mult=0.5, ops=["mbconv", "dsconv"],
                         kernels=[3, 5], expand_ratios=[3, 6], se_ratios=[0.0]),
], ids=["small", "proxyless", "mnasnet"])
def test_layout_candidates_are_the_derived_blocks(make: Any) -> None:
    space = make()
    layout = layout_for_space(space)
    candidates = {layer.signature: layer for layer in space.candidate_ops()}
    rng = np.random.default_rng(0)
    for _ in range(20):
        choices = [int(rng.integers(slot.size)) for slot in layout.slots]
        arch = layout.derive(choices)
        space.encode(arch)  # in the space
        chosen = [layer.candidates[choices[layer.slot]] for layer in layout.layers]
        expected = [c.signature for c in chosen if c is not None]
        assert [shape.signature for shape in layer_shapes(arch)[1:-1]] == expected
        assert set(expected) <= set(candidates)  # a table over candidate_ops() has every entry
    if isinstance(space, MnasNetSpace):  # one slot per stage, shared by the stage's layers
        assert [slot.name for slot in layout.slots] == [f"stage{i}" for i in range(1, 8)]
        assert len(layout.layers) > len(layout.slots)


def test_layout_refuses_other_spaces() -> None:
    from tiny_space import TinySpace

    with pytest.raises(LayoutError, match="no supernet layout"):
        layout_for_space(TinySpace())
    with pytest.raises(LayoutError, match="no mbconv"):
        layout_for_space(MnasNetSpace(resolution=RESOLUTION, num_classes=CLASSES, ops=["ghost"]))


def test_a_space_gets_a_supernet_by_implementing_its_plan() -> None:
    from tiny_space import TinySpace

    class PlannedTinySpace(TinySpace):
        def supernet_plan(self, **options: Any) -> SupernetPlan:  # kernel x expansion, depth fixed at 2
            pairs = list(itertools.product(range(2), range(2)))
            slot = Slot("blocks", tuple(f"k{k}_e{e}" for k, e in pairs), tuple(((0, k), (1, e)) for k, e in pairs))
            return SupernetPlan((slot,), (0, 0, 1), ((0, 1),))

    space = PlannedTinySpace()
    layout = layout_for_space(space)
    assert [len(layer.candidates) for layer in layout.layers] == [4, 4]
    assert layout.derive([3]) == space.decode([1, 1, 1])


@pytest.mark.parametrize("calibration", [None, Calibration(slope=1.3, intercept_ms=0.2, samples=9, ms_per_mweight=0.5)])
def test_expected_latency_of_a_one_hot_choice_is_the_table_prediction(space, lut, calibration) -> None:
    table = LatencyTable.load(lut)
    table.calibration = calibration
    layout = layout_for_space(space)
    model = LatencyModel(layout, table)
    for choices in itertools.islice(itertools.product(*(range(s.size) for s in layout.slots)), 0, None, 97):
        one_hot = [torch.nn.functional.one_hot(torch.tensor(c), s.size).float() for c, s in zip(choices, layout.slots)]
        predicted = table.predict(layout.derive(choices))
        assert model.of_choices(choices) == pytest.approx(predicted, abs=1e-9)
        assert float(model.expected_ms(one_hot)) == pytest.approx(predicted, rel=1e-6)


# -- binarization and gradients ----------------------------------------------------------------------

def test_each_step_runs_one_or_two_paths_per_layer(space, table, data) -> None:
    search = ProxylessSearch(space, table, data, config())
    counts = count_forwards(search.supernet)
    generator = torch.Generator().manual_seed(0)
    images, labels = data.train.tensors[0][:8], data.train.tensors[1][:8]
    model = search.supernet
    for _ in range(3):
        counts.clear()
        search.weight_step(images, labels, 0.01, generator)
        assert counts == {(l, model.active[layer.slot]): 1 for l, layer in enumerate(model.layers)}
        for layer in model.layers:  # only the active path was trained
            for o, candidate in enumerate(layer.candidates):
                grads = [p.grad is not None for p in candidate.parameters()]
                assert all(grads) if o == model.active[layer.slot] else not any(grads)
        counts.clear()
        search.arch_step(images, labels, generator)
        ran = {(l, o) for l, o in counts}
        assert ran == {(l, o) for l, layer in enumerate(model.layers) for o in model.sampled_paths(layer.slot)}
        assert all(len(model.sampled_paths(layer.slot)) == 2 for layer in model.layers)
        assert set(counts.values()) == {1}
    counts.clear()
    all_paths = ProxylessSearch(space, table, data, config(binarize="all"))
    counts = count_forwards(all_paths.supernet)
    all_paths.arch_gradients(images, labels, generator)
    assert len(counts) == sum(len(layer.candidates) for layer in all_paths.supernet.layers)
    assert all(alpha.grad.abs().sum() > 0 for alpha in all_paths.supernet.alphas)


def test_mnasnet_stage_layers_share_their_slot() -> None:
    space = MnasNetSpace(resolution=RESOLUTION, num_classes=CLASSES, base=[(8, 1, 1), (16, 2, 2), (24, 2, 2)],
                         ops=["mbconv"], kernels=[3, 5], expand_ratios=[3, 6], se_ratios=[0.0], layer_deltas=[0, 1],
                         width_multipliers=[1.0])
    layout = layout_for_space(space, layers_index=1)  # 2, 3 and 3 layers
    assert [len([l for l in layout.layers if l.slot == s]) for s in range(3)] == [2, 3, 3]
    model = Supernet(layout)
    counts = count_forwards(model)
    model.sample("two", torch.Generator().manual_seed(3))
    model(torch.randn(2, 3, RESOLUTION, RESOLUTION)).sum().backward()
    for l, layer in enumerate(model.layers):
        assert {o for (m, o) in counts if m == l} == set(model.sampled_paths(layer.slot))
    assert all(gate.grad is not None and torch.count_nonzero(gate.grad) == 2 for gate in model.gates)
    arch = layout.derive(model.active)
    kernels = [block.kernel for block in arch.blocks]
    assert kernels == [kernels[0]] * 2 + [kernels[2]] * 3 + [kernels[5]] * 3
    assert list(space.decode(space.encode(arch)).blocks) == list(arch.blocks)


def test_gate_gradient_estimator_is_the_softmax_derivative() -> None:
    torch.manual_seed(0)
    alpha, gate_grad = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    for paths in ([4, 1], list(range(7))):
        leaf = alpha.clone().requires_grad_(True)
        # d/dalpha of sum_j dL/dg_j * p_j over the sampled paths = the estimator (paper Eq. 4)
        (torch.softmax(leaf[paths], 0) * gate_grad[paths]).sum().backward()
        assert torch.allclose(gate_gradient_to_alpha(gate_grad, alpha, paths), leaf.grad)


def test_alpha_gets_gradients_from_each_loss_term_alone(space, table, data) -> None:
    images, labels = data.val.tensors[0][:8], data.val.tensors[1][:8]
    for changes in ({"latency_weight": 0.0}, {"ce_weight": 0.0, "latency_weight": 1.0}):
        search = ProxylessSearch(space, table, data, config(latency_loss="add_linear", **changes))
        stats = search.arch_gradients(images, labels, torch.Generator().manual_seed(1))
        model = search.supernet
        # the loss sees the full E[LAT]; only its gradient is restricted to the sampled pairs
        assert stats["step_latency_ms"] == pytest.approx(float(search.latency.expected_ms(model.probabilities()).detach()))
        for s, alpha in enumerate(model.alphas):
            sampled = model.sampled_paths(s)
            assert alpha.grad[sampled].abs().min() > 0, (changes, s)
            others = [o for o in range(len(alpha)) if o not in sampled]
            assert torch.count_nonzero(alpha.grad[others]) == 0
            assert float(alpha.grad.sum()) == pytest.approx(0.0, abs=1e-6)  # softmax gradients sum to 0


def test_two_path_update_leaves_unsampled_probabilities_unchanged(space, table, data) -> None:
    search = ProxylessSearch(space, table, data, config(arch_lr=0.5))
    model = search.supernet
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        before = [p.detach().clone() for p in model.probabilities()]
        search.arch_step(data.val.tensors[0][:8], data.val.tensors[1][:8], generator)
        for s, (old, new) in enumerate(zip(before, model.probabilities())):
            sampled = model.sampled_paths(s)
            others = [o for o in range(len(old)) if o not in sampled]
            assert torch.allclose(old[others], new[others], atol=1e-6)
            assert not torch.allclose(old[sampled], new[sampled])


def test_loss_forms() -> None:
    ce, expected = torch.tensor(2.0), torch.tensor(12.0)
    assert float(latency_loss(ce, expected, config(target_ms=10.0, latency_weight=2.0))) == pytest.approx(2.4)
    linear = config(target_ms=10.0, latency_loss="add_linear", latency_weight=0.5)
    assert float(latency_loss(ce, expected, linear)) == pytest.approx(2.1)
    paper = config(target_ms=10.0, latency_loss="mul_log", latency_weight=0.2, latency_exponent=0.3)
    assert float(latency_loss(ce, expected, paper)) == pytest.approx(0.2 * 2.0 * (np.log(12) / np.log(10)) ** 0.3)
    in_us = config(target_ms=0.5, latency_loss="mul_log", latency_unit_ms=0.001)
    assert float(latency_loss(ce, torch.tensor(0.6), in_us)) == pytest.approx(
        0.2 * 2.0 * (np.log(600) / np.log(500)) ** 0.3)
    with pytest.raises(ValueError, match="latency_unit_ms"):
        config(target_ms=0.5, latency_loss="mul_log")
    with pytest.raises(ValueError, match="warmup_epochs"):
        config(epochs=2, warmup_epochs=2)


# -- search results ----------------------------------------------------------------------------------

def test_latency_loss_alone_derives_the_tables_fastest_network(space, table, data) -> None:
    vectors = itertools.product(*(range(n) for n in space.cardinalities))
    fastest = min((space.decode(v) for v in vectors), key=table.predict)
    search = ProxylessSearch(space, table, data, config(
        latency_loss="add_linear", ce_weight=0.0, latency_weight=1.0, arch_lr=0.1, epochs=6, steps_per_epoch=8,
        target_ms=1.0))
    arch = search.run()
    assert arch == fastest
    assert search.history[-1]["expected_latency_ms"] < search.history[0]["expected_latency_ms"]


def test_target_derivation_is_the_most_probable_network_near_the_target(space, table) -> None:
    layout = layout_for_space(space)
    model = LatencyModel(layout, table)
    torch.manual_seed(4)
    probabilities = [torch.softmax(2 * torch.randn(slot.size), 0) for slot in layout.slots]
    every = list(itertools.product(*(range(slot.size) for slot in layout.slots)))
    for target in (4.0, 5.5, 7.0):
        near = [c for c in every if abs(model.of_choices(c) - target) <= 0.05 * target]
        best = max(near, key=lambda c: sum(float(p[o].log()) for p, o in zip(probabilities, c)))
        assert model.most_likely_within(probabilities, target, 0.05) == list(best)
    assert model.most_likely_within(probabilities, 0.1, 0.05) is None  # faster than anything in the space


def test_derived_spec_builds_round_trips_and_is_in_the_space(space, table, data) -> None:
    search = ProxylessSearch(space, table, data, config(epochs=1))
    search.run()
    arch = search.derive()
    assert ArchSpec.from_json(arch.to_json()) == arch
    assert list(space.decode(space.encode(arch)).blocks) == list(arch.blocks)
    logits = build_model(arch)(torch.randn(2, 3, RESOLUTION, RESOLUTION))
    assert logits.shape == (2, CLASSES)
    skipped = [slot.labels[c] for slot, c in zip(search.layout.slots, search.choices())].count("skip")
    assert len(arch.blocks) == len(search.layout.layers) - skipped


def test_resume_from_a_checkpoint_repeats_the_next_epoch(space, table, data, tmp_path: Path) -> None:
    settings = config(epochs=3, warmup_epochs=1, arch_lr=0.2)
    straight = ProxylessSearch(space, table, data, settings)
    for _ in range(3):
        straight.run_epoch()
    first = ProxylessSearch(space, table, data, settings)
    first.run_epoch()
    first.run_epoch()
    save_checkpoint(first, tmp_path)
    resumed = ProxylessSearch(space, table, data, settings)
    assert load_checkpoint(resumed, tmp_path) and resumed.epoch == 2
    resumed.run_epoch()
    for a, b in zip(straight.supernet.alphas, resumed.supernet.alphas):
        assert torch.equal(a, b)
    straight_state, resumed_state = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(straight_state[key], resumed_state[key]) for key in straight_state)
    assert [r["probabilities"] for r in straight.history] == [r["probabilities"] for r in resumed.history]
    with pytest.raises(ValueError, match="arch_lr"):
        load_checkpoint(ProxylessSearch(space, table, data, config(epochs=3, warmup_epochs=1, arch_lr=0.3)), tmp_path)
