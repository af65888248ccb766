"""SNIP (Lee et al., ICLR 2019, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity"), summed over the network as a NAS proxy by Abdelfattah et al. (ICLR 2021).

The connection sensitivity of a weight is |dL/dm| for a multiplicative mask m = 1, which equals
|theta * dL/dtheta|; L is the cross-entropy of one mini-batch. The score is the sum over all
conv/linear weights (BatchNorm kept, in train mode, as NASLib does).
"""

from __future__ import annotations

from torch import nn

from predictors.proxies.base import ProxyBatch, loss_backward, register_proxy, weighted_layers


@register_proxy("snip", needs_data=True, summary="sum |theta * dL/dtheta| over conv/linear weights",
                reference="Lee et al. 2019; Abdelfattah et al. 2021")
def snip(model: nn.Module, batch: ProxyBatch) -> float:
    loss_backward(model, batch)
    return sum(float((layer.weight.detach() * layer.weight.grad).abs().sum())
               for layer in weighted_layers(model) if layer.weight.grad is not None)
