"""The proxy interface, the `PROXIES` registry and the helpers several proxies share.

A zero-cost proxy scores an *untrained* network from one mini-batch (or from no data at all) in
the time of a few forward/backward passes; a higher score should mean a better network after
training. A proxy here is a plain function `fn(model, batch) -> float` registered with
`@register_proxy(name, ...)`. It may do anything to `model`: `predictors.proxies.scoring` hands
it a private copy, in train mode, with the RNG seeded, and times it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from search_spaces.errors import UnknownNameError
from search_spaces.registry import Registry


@dataclass(frozen=True)
class ProxyBatch:
    """One mini-batch: `inputs` (N, C, H, W) float, normalised as for training; `targets` (N,)
    int64 class labels; `num_classes`. Data-free proxies use only its shape."""

    inputs: torch.Tensor
    targets: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.inputs.ndim != 4 or self.targets.ndim != 1 or len(self.inputs) != len(self.targets):
            raise ValueError(f"ProxyBatch: inputs {tuple(self.inputs.shape)} must be (N, C, H, W) and "
                             f"targets {tuple(self.targets.shape)} (N,)")


ProxyFn = Callable[[nn.Module, ProxyBatch], float]


@dataclass(frozen=True)
class Proxy:
    name: str
    fn: ProxyFn
    needs_data: bool  # reads the images/labels (else only the batch's shape, or nothing)
    summary: str
    reference: str


PROXIES: Registry[Proxy] = Registry("zero-cost proxy")
# other names the literature uses for the same proxy
ALIASES = {"jacob_cov": "jacov", "naswot": "nwot", "flops": "macs", "#params": "params"}


def register_proxy(name: str, *, needs_data: bool, summary: str, reference: str) -> Callable[[ProxyFn], ProxyFn]:
    def decorator(fn: ProxyFn) -> ProxyFn:
        PROXIES.add(name, Proxy(name, fn, needs_data, summary, reference))
        return fn

    return decorator


def get_proxy(name: str) -> Proxy:
    return PROXIES.get(ALIASES.get(name, name))


def parse_proxy_names(text: str | list[str]) -> list[str]:
    """'synflow,nwot' (or a list) -> registered names, aliases resolved, order kept, no repeats;
    an unknown name is an `UnknownNameError` listing the registered ones."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        name = get_proxy(item).name
        if name not in names:
            names.append(name)
    if not names:
        raise UnknownNameError(f"no zero-cost proxy named; registered: {', '.join(PROXIES.names())}")
    return names


# -- shared helpers ------------------------------------------------------------------------------

def weighted_layers(model: nn.Module) -> Iterator[nn.Conv2d | nn.Linear]:
    """The conv and linear layers, in module order: the layers NASLib's pruning-based proxies sum
    over (`get_layer_metric_array`); BN scale/shift and biases are not scored."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            yield module


def without_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm replaced by identity, in place (NASLib's `bn=False` copy)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    return model


def loss_backward(model: nn.Module, batch: ProxyBatch) -> None:
    """Cross-entropy of the batch, backpropagated into `.grad` (grads zeroed first)."""
    model.zero_grad(set_to_none=True)
    logits = model(batch.inputs)
    nn.functional.cross_entropy(logits, batch.targets).backward()
