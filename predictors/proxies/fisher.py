"""fisher (Turner et al., ICLR 2020, "BlockSwap"; Theis et al. 2018), summed over the network as a
NAS proxy by Abdelfattah et al. (ICLR 2021).

For every conv/linear output channel k and image n, g_nk = sum over positions of activation x
gradient of the cross-entropy at that activation; the channel's saliency is 0.5 * mean_n g_nk^2.
The score sums, over all conv/linear layers, each channel's saliency times the number of weights
feeding that channel (NASLib broadcasts the channel value over the channel's weights and sums
the weight array), BN kept, train mode.
"""

from __future__ import annotations

import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, register_proxy, weighted_layers


@register_proxy("fisher", needs_data=True, summary="sum over channels of fan-in x 0.5 mean_n (sum_pos act * dL/dact)^2",
                reference="Theis et al. 2018; Turner et al. 2020; Abdelfattah et al. 2021")
def fisher(model: nn.Module, batch: ProxyBatch) -> float:
    total = torch.zeros((), dtype=torch.float64)

    def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        activation = output.detach()
        fan_in = module.weight[0].numel()  # weights per output channel

        def saliency(gradient: torch.Tensor) -> None:
            product = activation * gradient
            per_channel = product.sum(dim=tuple(range(2, product.ndim))) if product.ndim > 2 else product
            total.add_(0.5 * fan_in * per_channel.double().pow(2).mean(0).sum())

        if output.requires_grad:
            output.register_hook(saliency)

    handles = [layer.register_forward_hook(keep) for layer in weighted_layers(model)]
    try:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(batch.inputs), batch.targets).backward()
    finally:
        for handle in handles:
            handle.remove()
    return float(total)
