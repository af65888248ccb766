"""Trained weight sharing: linear init, k-means, centroid gradients = sums of members', zeros kept."""

import pytest
import torch
from torch import nn

from compress.policy import PolicyError
from compress.sparsity import apply_masks, magnitude_masks, sparsity_of
from compress.weight_sharing import (bits_policy, clustered_tensors, kmeans_1d, linear_centroids, remove_sharing,
                                     share_weights)


def _linear() -> nn.Linear:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.9, 1.2, 2.8], [3.0, 0.1, -1.0, 0.0]]))
    return layer


def test_linear_init_spans_min_to_max_and_kmeans_moves_to_the_means():
    values = torch.tensor([-1.0, 0.1, 1.0, 1.2, 2.8, 3.0])
    assert linear_centroids(values, 3).tolist() == [-1.0, 1.0, 3.0]
    centroids, indices = kmeans_1d(values, linear_centroids(values, 3))
    assert indices.tolist() == [0, 1, 1, 1, 2, 2]
    assert centroids.tolist() == pytest.approx([-1.0, 2.3 / 3, 2.9])


def test_a_centroid_gradient_is_the_sum_of_its_members_gradients():
    layer = _linear()
    share_weights(layer, {"": 2})  # the non-zeros into 4 clusters: {-1}, {0.1}, {0.9, 1.2}, {2.8, 3}
    shared = layer.parametrizations.weight[0]
    assert shared.indices[shared.mask].tolist() == [2, 2, 3, 3, 1, 0]  # 0.9, 1.2, 2.8, 3, 0.1, -1
    assert shared.centroids.tolist() == pytest.approx([-1.0, 0.1, 1.05, 2.9])
    # d(sum(w * g))/dw = g: each centroid collects the g of its members
    g = torch.tensor([[10.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 10.0]])
    (layer.weight * g).sum().backward()
    assert shared.centroids.grad.tolist() == [6.0, 5.0, 3.0, 7.0]  # the zeros' 10s go nowhere


def test_pruned_weights_stay_zero_and_the_layer_keeps_2_pow_bits_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    apply_masks(net, magnitude_masks(net, 0.75))
    share_weights(net, bits_policy(net, 3, fc_bits=2))
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        net(torch.randn(8, 16)).square().mean().backward()
        optimizer.step()
    stored = clustered_tensors(net)
    assert {name: t.bits for name, t in stored.items()} == {"0.weight": 2, "2.weight": 2}
    assert stored["0.weight"].positions.size == 64  # 25% of 256 kept
    remove_sharing(net)
    assert sparsity_of(net)["total"] == 0.75
    assert len(torch.unique(net[0].weight[net[0].weight != 0])) <= 4
    assert torch.equal(torch.from_numpy(stored["0.weight"].dense()), net[0].weight.detach())


def test_bits_policy_refuses_unknown_layers_and_bad_widths():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    assert bits_policy(net, 8, {"2": 4}) == {"0": 8, "2": 4}
    with pytest.raises(PolicyError, match=r"unknown layer\(s\) \['fc'\]; layers: \['0', '2'\]"):
        bits_policy(net, 5, {"fc": 4})
    with pytest.raises(PolicyError, match=r"bits of '--bits' = 9: expected an integer in 1..8"):
        bits_policy(net, 9)
