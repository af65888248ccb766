"""The elastic supernet over the `mnasnet` space: every op type (mbconv with and without an expand
conv, shuffle, ghost, dsconv), SE on and off, every width and the fewest and most layers leave the
supernet as ordinary models with the supernet's logits; sampling stays in the space and in a
progressive-shrinking phase's dimensions; `fire` and networks outside the space are refused.
A four-stage space at 16 px (the third stage strided, so it offers shuffle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_ofa_supernet import logits_differ, perturbed

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_train import OFATrainConfig, train_supernet
from nas.training.data import load_dataset
from search_spaces.spaces.mnasnet import MnasNetSpace
from search_spaces.spec import Op
from search_spaces.supernet_plan import SupernetPlanError

BASE = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (48, 1, 1))


def tiny_space(**options) -> MnasNetSpace:
    return MnasNetSpace(resolution=16, num_classes=4, base=BASE, **options)


@pytest.fixture(scope="module")
def supernet() -> ElasticSupernet:
    torch.manual_seed(0)
    return perturbed(ElasticSupernet(tiny_space()))


def net(space: MnasNetSpace, *stages: tuple[str, int, float, float, int, int]):
    """A network from per-stage (op, kernel, expansion, SE ratio, layers, width) values."""
    vector = []
    for stage, (op, kernel, expand, se, layers, width) in zip(space.stages, stages):
        vector += [stage.ops.index(Op(op)), stage.kernels.index(kernel), stage.expand_ratios.index(expand),
                   stage.se_ratios.index(se), stage.layers.index(layers), stage.widths.index(width)]
    return space.decode(vector)


def test_the_tiny_space_has_the_shapes_the_cases_below_cover(supernet: ElasticSupernet) -> None:
    stages = supernet.space.stages
    assert [s.widths for s in stages] == [(16,), (24, 32), (24, 32), (40, 48, 64)]
    assert [s.layers for s in stages] == [(1, 2), (1, 2, 3), (1, 2, 3), (1, 2)]
    assert Op.SHUFFLE in stages[2].ops and Op.SHUFFLE not in stages[1].ops
    assert len(supernet.phases()) == 5  # largest, +kernel, +depth, +expansion (with SE and op), +width


def test_every_op_se_width_and_depth_extracts_with_the_supernets_logits(supernet: ElasticSupernet) -> None:
    space = supernet.space
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cases = [
        supernet.largest(), supernet.smallest(),
        net(space, ("ghost", 5, 3.0, 0.25, 1, 16), ("dsconv", 3, 1.0, 0.0, 3, 24),
            ("shuffle", 7, 4.0, 0.25, 3, 32), ("mbconv", 5, 1.0, 0.25, 1, 40)),
        net(space, ("dsconv", 7, 1.0, 0.0, 2, 16), ("ghost", 3, 1.0, 0.0, 2, 32),
            ("mbconv", 3, 3.0, 0.0, 1, 24), ("ghost", 7, 6.0, 0.25, 2, 48)),
        net(space, ("mbconv", 3, 1.0, 0.0, 2, 16), ("mbconv", 7, 4.0, 0.25, 1, 24),
            ("shuffle", 3, 1.0, 0.0, 1, 24), ("dsconv", 5, 1.0, 0.0, 2, 64)),
        net(space, ("mbconv", 7, 6.0, 0.0, 1, 16), ("ghost", 5, 6.0, 0.25, 3, 32),
            ("ghost", 5, 3.0, 0.0, 2, 32), ("mbconv", 3, 3.0, 0.25, 1, 48)),
    ]
    rng = np.random.default_rng(0)
    cases += [supernet.sample(rng) for _ in range(12)]
    seen = set()
    for arch in cases:
        assert logits_differ(supernet, arch, x) < 1e-4, arch.to_string()
        seen |= {(b.op.value, b.expand_ratio == 1.0, b.se_ratio > 0) for b in arch.blocks}
    for op in ("mbconv", "shuffle", "ghost"):
        assert {(op, e1, se) for e1 in (False, True) for se in (False, True)} <= seen, op
    assert ("dsconv", True, False) in seen


def test_reordering_inner_channels_keeps_the_largest_networks_function() -> None:
    torch.manual_seed(3)
    model = ElasticSupernet(tiny_space()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    model.set_active(model.largest())
    with torch.no_grad():
        before = model(x)
        position = model.stages[1][0].paths["mbconv"]
        norms = position.project.weight.abs().sum(dim=(0, 2, 3))
        model.reorder_channels()
        after = model(x)
    assert (before - after).abs().max() < 1e-5
    assert torch.equal(position.project.weight.abs().sum(dim=(0, 2, 3)), norms.sort(descending=True).values)


def test_sampling_stays_in_the_space_and_in_the_phase(supernet: ElasticSupernet) -> None:
    space, rng = supernet.space, np.random.default_rng(2)
    kernel_phase = {(b.op, b.expand_ratio, b.se_ratio, b.out_channels) for _ in range(50)
                    for b in supernet.sample(rng, "network", frozenset({"kernel"})).blocks}
    assert {(op, e, se) for op, e, se, _ in kernel_phase} == {(Op.MBCONV, 6.0, 0.25)}
    assert {w for *_, w in kernel_phase} == {16, 32, 64}  # the widest of each stage
    before_width = [supernet.sample(rng, "choice", frozenset({"kernel", "depth", "expand"})) for _ in range(50)]
    assert {b.out_channels for a in before_width for b in a.blocks} == {16, 32, 64}
    assert {b.op for a in before_width for b in a.blocks} == {Op.MBCONV, Op.SHUFFLE, Op.GHOST, Op.DSCONV}
    for arch in [supernet.sample(rng) for _ in range(30)]:
        space.encode(arch)  # in the space
    smallest = supernet.smallest()
    assert [(b.op, b.kernel, b.expand_ratio, b.se_ratio) for b in smallest.blocks] == [(Op.MBCONV, 3, 1.0, 0.0)] * 4
    assert [b.out_channels for b in smallest.blocks] == [16, 24, 24, 40]


def test_fire_and_networks_outside_the_space_are_refused(supernet: ElasticSupernet) -> None:
    with pytest.raises(SupernetPlanError, match=r"ops \['fire'\] not covered; use ops among \{mbconv, shuffle, "
                                                r"ghost, dsconv\}"):
        ElasticSupernet(tiny_space(ops=["mbconv", "fire"]))
    narrow = ElasticSupernet(tiny_space(width_multipliers=(1.0,)))
    with pytest.raises(SupernetPlanError, match=r"elastic supernet over mnasnet: .*out_channels=32 not in \{24\}"):
        narrow.covers(supernet.largest())


def test_a_mnasnet_supernet_trains_progressively(tmp_path: Path) -> None:
    data = load_dataset("synthetic:4", 16, seed=0, limit=16)
    torch.manual_seed(0)
    model = ElasticSupernet(tiny_space(ops=["mbconv", "dsconv"], kernels=(3, 5), expand_ratios=(1, 3)))
    config = OFATrainConfig(epochs=2, batch_size=8, max_batches_per_epoch=1, device="cpu", eval_calibration_images=8,
                            schedule="progressive", phase_fractions=(0.0, 0.0, 0.5, 0.0, 0.5))
    history = train_supernet(model, data, config, tmp_path, progress=False)["history"]
    assert [h["elastic"] for h in history] == [["depth", "kernel"], ["depth", "expand", "kernel", "width"]]
    assert all(0 < h["loss_smallest"] < 10 for h in history)
