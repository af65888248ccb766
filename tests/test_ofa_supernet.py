"""The elastic (Once-for-All) supernet: an extracted sub-network is an ordinary model computing
exactly what the supernet computes for it, channel re-ordering leaves the largest network's
function unchanged, coverage errors name the field, and sampling stays in the space (uniform
over networks). The full proxyless space at 16 px, width 0.5, keeps it fast."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from proxyless_helpers import SmallProxylessSpace

from nas.oneshot.elastic_layers import ElasticMBConv
from nas.oneshot.elastic_supernet import ElasticSupernet
from search_spaces.build import build_model
from search_spaces.spaces import get_space
from search_spaces.errors import OptionError
from search_spaces.spec import Activation
from search_spaces.supernet_plan import SupernetPlanError


@pytest.fixture(scope="module")
def supernet() -> ElasticSupernet:
    torch.manual_seed(0)
    return perturbed(ElasticSupernet(get_space("proxyless", resolution=16, num_classes=10, width_mult=0.5)))


def perturbed(model: ElasticSupernet) -> ElasticSupernet:
    """`model` with non-trivial kernel transforms, biases and BN statistics, so that every number
    `extract` copies is exercised; in eval mode."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "kernel_transform" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    return model.eval()


def arch_of(supernet: ElasticSupernet, choices: list[list[tuple[int, float]]]):
    return supernet.adapter.arch_of(choices)


def logits_differ(supernet: ElasticSupernet, arch, x: torch.Tensor) -> float:
    model = build_model(arch)
    model.load_state_dict(supernet.extract(arch))
    model.eval()
    supernet.set_active(arch)
    with torch.no_grad():
        return float((model(x) - supernet(x)).abs().max())


def test_an_extracted_subnetwork_computes_the_supernets_logits(supernet: ElasticSupernet) -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mixed = arch_of(supernet, [[(5, 1.0)], [(3, 3.0), (5, 6.0)], [(7, 3.0)], [(3, 6.0), (3, 3.0), (5, 3.0)],
                               [(5, 3.0)], [(3, 3.0), (7, 6.0)], [(5, 6.0)]])
    for arch in (supernet.largest(), supernet.smallest(), mixed):
        assert logits_differ(supernet, arch, x) < 1e-4
    assert [len(b) for b in (supernet.largest().blocks, supernet.smallest().blocks, mixed.blocks)] == [22, 7, 11]
    supernet.set_active(supernet.largest())


def test_a_smaller_kernel_is_the_transformed_centre_of_the_larger() -> None:
    layer = ElasticMBConv(8, 8, 1, (3, 5, 7), (3.0, 6.0), Activation.RELU6)
    with torch.no_grad():
        layer.kernel_transform_5.copy_(2 * torch.eye(25))  # doubles the 5x5 crop
        layer.kernel_transform_3.copy_(torch.eye(9))
    full = layer.depthwise_weight[:24]
    assert torch.equal(layer.depthwise_kernel(5, 24), 2 * full[:, :, 1:6, 1:6])
    assert torch.equal(layer.depthwise_kernel(3, 24), 2 * full[:, :, 2:5, 2:5])
    assert layer.depthwise_kernel(7, 24).shape == (24, 1, 7, 7)


def test_reordering_channels_keeps_the_largest_network_and_sorts_importance() -> None:
    torch.manual_seed(2)
    model = ElasticSupernet(SmallProxylessSpace()).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        model.reorder_channels()
        after = model(x)
    assert (before - after).abs().max() < 1e-5
    position = model.stages[1][0]
    importance = position.project_weight.abs().sum(dim=(0, 2, 3))
    assert bool((importance[:-1] >= importance[1:]).all())


def test_reordering_moves_the_momentum_with_its_weight() -> None:
    layer = ElasticMBConv(2, 2, 1, (3,), (2.0,), Activation.RELU6)
    with torch.no_grad():
        layer.project_weight.copy_(torch.tensor([[1.0, 2, 3, 4], [0, 0, 0, 1]]).view(2, 4, 1, 1))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    momentum = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]).view(2, 4, 1, 1)
    optimizer.state[layer.project_weight]["momentum_buffer"] = momentum
    layer.reorder_channels(optimizer)
    # column L1 norms 1, 2, 3, 5: reversed order
    assert layer.project_weight.view(2, 4).tolist() == [[4, 3, 2, 1], [1, 0, 0, 0]]
    assert optimizer.state[layer.project_weight]["momentum_buffer"].view(2, 4).tolist() == [[4, 3, 2, 1], [8, 7, 6, 5]]


def test_coverage_errors_name_the_block_and_field(supernet: ElasticSupernet) -> None:
    largest = supernet.largest()
    wider = dataclasses.replace(largest.blocks[1], expand_ratio=4.0)
    wrong_expansion = largest.replace(blocks=(largest.blocks[0], wider, *largest.blocks[2:]))
    with pytest.raises(SupernetPlanError, match=r"blocks\[1\] kernel=7, expand_ratio=4 not in \{k3_e3"):
        supernet.covers(wrong_expansion)
    with pytest.raises(SupernetPlanError, match="resolution=32 does not fit"):
        supernet.set_active(largest.replace(resolution=32))
    with pytest.raises(SupernetPlanError, match="space='nb201' is not covered; covered spaces: proxyless"):
        ElasticSupernet(get_space("nb201", resolution=16, num_classes=10))


def test_samples_are_in_the_space_and_uniform_over_networks() -> None:
    space = SmallProxylessSpace()
    model = ElasticSupernet(space)
    rng = np.random.default_rng(0)
    depths: Counter[int] = Counter()
    for _ in range(700):
        arch = model.sample(rng)
        space.encode(arch)
        depths[sum(1 for b in arch.blocks if b.out_channels == 24)] += 1
    # a two-layer stage of 6 choices per layer: 6 networks of depth 1, 36 of depth 2 -> 1/7 vs 6/7
    assert depths[1] / 700 == pytest.approx(1 / 7, abs=0.04)
    by_choice = Counter(sum(1 for b in model.sample(rng, "choice").blocks if b.out_channels == 24) for _ in range(400))
    assert by_choice[1] / 400 == pytest.approx(1 / 2, abs=0.07)  # OFA's sampling: each depth equally often
    with pytest.raises(OptionError, match=r"sampling='depth' not in \{network, choice\}"):
        model.sample(rng, "depth")
    assert model.smallest().blocks[1].kernel == 3 and model.largest().blocks[1].expand_ratio == 6.0


def test_fbnet_subnetworks_with_every_op_family_extract_exactly() -> None:
    torch.manual_seed(4)
    space = get_space("fbnet", resolution=16, num_classes=10)
    model = ElasticSupernet(space).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
    # e1 (expand conv = first `in` rows of e6), e3, grouped g2, and `skip` as the 1x1 conv (stage3's first)
    ops = ("skip-k3_e1-k5_e3-k3_e1_g2-skip-skip-k5_e6-k3_e3-skip-skip-k5_e1_g2-k3_e6-skip-skip-"
           "k3_e1-skip-skip-skip-k5_e3-skip-skip-k3_e3")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mixed = space.from_arch_string(ops)
    assert [b.op.value for b in mixed.blocks[:5]] == ["irf", "irf", "irf", "pw", "irf"]
    rng = np.random.default_rng(0)
    for arch in (mixed, model.largest(), model.smallest(), model.sample(rng)):
        assert logits_differ(model, arch, x) < 1e-4
    assert space.arch_string(model.smallest()) == "-".join(["skip"] + ["k3_e1", "skip", "skip", "skip"] * 5
                                                            + ["k3_e1"])
    for _ in range(50):
        space.encode(model.sample(rng))
