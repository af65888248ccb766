"""SynFlow (Tanaka et al., NeurIPS 2020, "Pruning neural networks without any data by iteratively
conserving synaptic flow"), used as a NAS proxy by Abdelfattah et al. (ICLR 2021, "Zero-Cost
Proxies for Lightweight NAS").

All parameters are replaced by their absolute values, BatchNorm is removed (NASLib's `bn=False`),
the network runs in float64 on one all-ones input, and R = sum(output) is backpropagated. The
score is sum over conv/linear weights of |theta * dR/dtheta|. No data is read (only the input
shape). NASLib (NAS-Bench-Suite-Zero) stores log(score) (-log(-score) for a negative one, 0 for
0); we return the same logarithm, so our values are directly comparable to the published ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, register_proxy, weighted_layers, without_batchnorm


def synflow_raw(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """sum |theta * dR/dtheta| over conv/linear weights of |model| without BN (float64)."""
    net = without_batchnorm(model).double()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    net.zero_grad(set_to_none=True)
    output = net(torch.ones((1, *input_shape), dtype=torch.float64))
    output.sum().backward()
    total = 0.0
    for layer in weighted_layers(net):
        if layer.weight.grad is not None:
            total += float((layer.weight.detach() * layer.weight.grad).abs().sum())
    return total


@register_proxy("synflow", needs_data=False, summary="log sum |theta * dR/dtheta|, |weights|, no BN, ones input",
                reference="Tanaka et al. 2020; Abdelfattah et al. 2021")
def synflow(model: nn.Module, batch: ProxyBatch) -> float:
    score = synflow_raw(model, tuple(batch.inputs.shape[1:]))
    if score == 0.0 or not math.isfinite(score):
        return score
    return math.log(score) if score > 0 else -math.log(-score)
