"""Zen-score (Lin et al., ICCV 2021, "Zen-NAS: A Zero-Shot NAS for High-Performance Image
Recognition"), as NAS-Bench-Suite-Zero computes it.

Weights are re-drawn from N(0, 1) (conv and linear; BN scale 1, shift 0), the network runs in
train mode on Gaussian input x and on x + 0.01 * eps; the score is
log(mean_n sum |f(x) - f(x + 0.01 eps)|) + sum over BN layers of log sqrt(mean running_var), with
f the feature map before global pooling. Data-free: only the batch's shape is used. Needs a model
with `features(x)` and a `head` with `preact` (this project's `Network`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, register_proxy


def gaussian_init(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def pre_pool_features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    head = model.head  # type: ignore[attr-defined]
    return head.conv(head.preact(model.features(inputs)))  # type: ignore[attr-defined, operator]


@register_proxy("zen", needs_data=False, summary="log E|f(x)-f(x+0.01e)| + sum log sqrt(BN var), Gaussian weights and input",
                reference="Lin et al. 2021")
def zen(model: nn.Module, batch: ProxyBatch, mixup_gamma: float = 1e-2) -> float:
    gaussian_init(model)
    shape = tuple(batch.inputs.shape)
    with torch.no_grad():
        first = torch.randn(shape)
        second = torch.randn(shape)
        difference = pre_pool_features(model, first) - pre_pool_features(model, first + mixup_gamma * second)
        score = difference.abs().sum(dim=(1, 2, 3)).mean()
        log_bn = sum(float(torch.log(torch.sqrt(module.running_var.mean())))
                     for module in model.modules() if isinstance(module, nn.BatchNorm2d))
    return math.log(float(score)) + log_bn if score > 0 else float("-inf")
