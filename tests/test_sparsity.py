"""Magnitude pruning masks: exact counts, zeros that survive training, and baked-in weights."""

import pytest
import torch
from torch import nn

from compress.policy import PolicyError
from compress.sparsity import apply_masks, current_masks, magnitude_masks, remove_masks, sparsity_of


def _net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -2, 3, -4, 5, -6, 7, -8]).view(2, 1, 2, 2))
        net[2].weight.copy_(torch.tensor([[0.1, 0.4], [-0.3, 0.2]]))
    return net


def test_layer_scope_prunes_the_smallest_magnitudes_of_each_tensor():
    masks = magnitude_masks(_net(), 0.5)
    assert masks["0"].flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert masks["2"].flatten().tolist() == [0, 1, 1, 0]


def test_global_scope_ranks_all_weights_together():
    # 12 weights, 6 pruned: the four linear weights (all < 1) and the conv's 1 and -2
    masks = magnitude_masks(_net(), 0.5, scope="global")
    assert masks["0"].flatten().tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert masks["2"].sum() == 0


def test_ties_are_pruned_in_position_order_so_the_count_is_exact():
    net = nn.Linear(4, 1, bias=False)
    nn.init.constant_(net.weight, 0.5)
    assert magnitude_masks(net, 0.5)[""].flatten().tolist() == [0, 0, 1, 1]


def test_pruned_weights_stay_zero_through_training_and_after_removal():
    net = _net()
    apply_masks(net, magnitude_masks(net, 0.5))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(4, 1, 2, 2)).square().sum().backward()
        optimizer.step()
    assert sparsity_of(net) == {"0": 0.5, "2": 0.5, "total": 0.5}
    assert set(current_masks(net)) == {"0", "2"}
    remove_masks(net)
    assert set(net.state_dict()) == {"0.weight", "2.weight", "2.bias"}
    assert sparsity_of(net)["total"] == 0.5


def test_bad_sparsity_and_unknown_layers_are_refused_by_name():
    with pytest.raises(PolicyError, match=r"sparsity of '0' = 1.0: expected a fraction in \[0, 1\)"):
        magnitude_masks(_net(), {"0": 1.0})
    with pytest.raises(PolicyError, match=r"unknown layer\(s\) \['blocks.9'\]; prunable layers: \['0', '2'\]"):
        magnitude_masks(_net(), {"blocks.9": 0.5})
    with pytest.raises(PolicyError, match="scope='row'"):
        magnitude_masks(_net(), 0.5, scope="row")


def test_removing_the_masks_of_a_copy_leaves_the_original_masked():
    import copy

    net = _net()
    apply_masks(net, magnitude_masks(net, 0.5))
    baked = remove_masks(copy.deepcopy(net))
    assert set(baked.state_dict()) == {"0.weight", "2.weight", "2.bias"}
    assert set(current_masks(net)) == {"0", "2"}
    assert net[0].weight.flatten().tolist() == [0, 0, 0, 0, 5, -6, 7, -8]
