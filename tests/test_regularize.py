"""Sparsity penalties (SSL group lasso, network slimming's BN L1): hand-computed values, and
training with them shrinking what they penalise."""

import pytest
import torch
from torch import nn

from compress.policy import PolicyError
from compress.regularize import bn_l1_penalty, group_lasso_penalty, residual_branches, sparsity_penalty
from nas.training import TrainConfig, load_dataset
from nas.training.train import train
from search_spaces.errors import OptionError


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def _net() -> nn.Sequential:
    """A dense 1x1 conv W = [[3, 4], [0, 0]] in a residual block, a depthwise conv (6, 8), a BN with gamma (1, -2)."""
    net = nn.Sequential(_Residual(), nn.Conv2d(2, 2, 1, groups=2, bias=False), nn.BatchNorm2d(2))
    with torch.no_grad():
        net[0].conv.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]).view(2, 2, 1, 1))
        net[1].weight.copy_(torch.tensor([6.0, 8.0]).view(2, 1, 1, 1))
        net[2].weight.copy_(torch.tensor([1.0, -2.0]))
    return net


def test_group_lasso_sums_the_l2_norms_of_filters_and_channels():
    net = _net()
    # filters: |(3, 4)| + |(0, 0)| = 5 and 6 + 8 = 14 (depthwise); channels of the dense conv: |(3, 0)| + |(4, 0)| = 7
    assert group_lasso_penalty(net, channels=False).item() == pytest.approx(19.0)
    assert group_lasso_penalty(net).item() == pytest.approx(26.0)
    # depth: the residual branch's weights as one group, sqrt(9 + 16) = 5
    assert group_lasso_penalty(net, filters=False, channels=False, depth=True).item() == pytest.approx(5.0)
    assert residual_branches(net) == [[net[0].conv]]


def test_bn_l1_and_the_weighted_sum():
    net = _net()
    assert bn_l1_penalty(net).item() == pytest.approx(3.0)
    assert sparsity_penalty(net, group_lasso=0.1, bn_l1=0.01)().item() == pytest.approx(2.6 + 0.03)
    assert sparsity_penalty(net) is None
    with pytest.raises(PolicyError, match=r"bn_l1=-1.0: expected a finite coefficient >= 0"):
        sparsity_penalty(net, bn_l1=-1.0)
    with pytest.raises(OptionError, match=r"TrainConfig.group_lasso=nan: expected a finite float >= 0"):
        TrainConfig(group_lasso=float("nan"))


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_training_with_bn_l1_drives_gammas_down():
    data = load_dataset("synthetic", 8)
    config = TrainConfig(epochs=2, batch_size=32, device="cpu", max_batches_per_epoch=5, weight_decay=0.0)
    plain, slim = _tiny(), _tiny()
    train(plain, data, config)
    train(slim, data, TrainConfig(**{**config.__dict__, "bn_l1": 0.05}))
    # every gamma ends ~0.05 lower: the L1 gradient is a constant 0.05 per gamma, accumulated by
    # SGD's Nesterov momentum over the 10 steps; nothing else differs between the two runs
    shrinkage = plain[1].weight.detach() - slim[1].weight.detach()
    assert shrinkage.min().item() > 0.04 and shrinkage.max().item() < 0.06
