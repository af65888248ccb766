"""The two baselines every proxy study reports: `params`, the learnable parameters (weights,
biases, BN scale and shift), and `macs`, multiply-accumulates of conv and linear layers for one
image of the batch's shape (biases, BN, activations and pooling not counted: the convention of
`predictors.cost`). Both are counted on the built module, so they work for any network."""

from __future__ import annotations

import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, register_proxy, weighted_layers


@register_proxy("params", needs_data=False, summary="number of learnable parameters", reference="-")
def params(model: nn.Module, batch: ProxyBatch) -> float:
    return float(sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad))


@register_proxy("macs", needs_data=False, summary="conv + linear multiply-accumulates per image", reference="-")
def macs(model: nn.Module, batch: ProxyBatch) -> float:
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        per_output = module.weight[0].numel()  # in_channels / groups * kernel area, or in_features
        total += output[0].numel() * per_output

    handles = [layer.register_forward_hook(count) for layer in weighted_layers(model)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *batch.inputs.shape[1:])))
    finally:
        for handle in handles:
            handle.remove()
    return float(total)
