"""grad_norm (Abdelfattah et al., ICLR 2021, "Zero-Cost Proxies for Lightweight NAS"): the sum
over conv/linear layers of the Euclidean norm of each layer's weight gradient of the cross-entropy
of one mini-batch (a per-layer norm, then summed, as NASLib does)."""

from __future__ import annotations

from torch import nn

from predictors.proxies.base import ProxyBatch, loss_backward, register_proxy, weighted_layers


@register_proxy("grad_norm", needs_data=True, summary="sum over layers of ||dL/dW||_2",
                reference="Abdelfattah et al. 2021")
def grad_norm(model: nn.Module, batch: ProxyBatch) -> float:
    loss_backward(model, batch)
    return sum(float(layer.weight.grad.norm()) for layer in weighted_layers(model) if layer.weight.grad is not None)
