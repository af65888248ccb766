"""NASWOT, `nwot` (Mellor et al., ICML 2021, "Neural Architecture Search without Training", v2).

Every ReLU's input is turned into a binary code per image (unit active or not). For each ReLU,
K += c c^T + (1 - c)(1 - c)^T, i.e. the number of units on which two images agree (the total
units minus the Hamming distance); the score is log|det K| over all ReLUs of the network, as
NASLib computes it (one K summed over every `nn.ReLU` module, no normalisation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, register_proxy


@register_proxy("nwot", needs_data=True, summary="log|det K|, K: agreements of the ReLU binary codes between images",
                reference="Mellor et al. 2021")
def nwot(model: nn.Module, batch: ProxyBatch) -> float:
    size = len(batch.inputs)
    kernel = torch.zeros((size, size), dtype=torch.float64)

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        codes = (inputs[0].detach().reshape(size, -1) > 0).double()
        kernel.add_(codes @ codes.T).add_((1.0 - codes) @ (1.0 - codes).T)

    handles = [module.register_forward_hook(count) for module in model.modules() if isinstance(module, nn.ReLU)]
    try:
        with torch.no_grad():
            model(batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    _, logdet = np.linalg.slogdet(kernel.numpy())
    return float(logdet)
