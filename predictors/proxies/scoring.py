"""Scoring a model with several proxies: each on its own copy, seeded, timed, with no side effect
on the caller (the model's weights, buffers, mode and gradients, and the global torch RNG are as
they were). Also the mini-batch and the initialisation the published NB201 scores used.

Protocol (NAS-Bench-Suite-Zero's, the source of the published NB201 scores): one mini-batch of
64 training images, normalised per channel; a freshly built network with PyTorch's default layer
initialisation; train mode (BN on batch statistics).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, get_proxy
from search_spaces.errors import OptionError

BATCH_SIZE = 64
INITS = ("torch", "as-built")


@dataclass(frozen=True)
class ProxyScore:
    name: str
    value: float
    seconds: float


def sample_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, size: int = BATCH_SIZE,
                 seed: int = 0) -> ProxyBatch:
    """`size` images drawn without replacement by `seed` (its own generator: the global RNG is not
    touched) from float NCHW `images`, already normalised as for training, and their labels."""
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"sample_batch: images {tuple(images.shape)} must be (N, C, H, W), labels (N,)")
    if not 1 < size <= len(images):
        raise OptionError(f"proxy batch size {size} must be in 2..{len(images)} (the training images available)")
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return ProxyBatch(images[chosen].float().contiguous(), labels[chosen].long(), num_classes)


def shape_batch(channels: int, resolution: int, num_classes: int, size: int = BATCH_SIZE) -> ProxyBatch:
    """A batch of zeros of the right shape, for data-free proxies when no dataset is given."""
    return ProxyBatch(torch.zeros((size, channels, resolution, resolution)), torch.zeros(size, dtype=torch.int64),
                      num_classes)


def reinitialise(model: nn.Module, init: str) -> None:
    """`torch`: every layer's own `reset_parameters()` (PyTorch's default init, which NASLib's
    NB201 networks keep), BN running statistics reset; `as-built`: leave the weights alone."""
    if init not in INITS:
        raise OptionError(f"init {init!r} unknown; choose one of {', '.join(INITS)}")
    if init == "torch":
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)  # conv, linear, BN (+ its statistics)
            if callable(reset):
                reset()


def score_model(model: nn.Module, names: list[str], batch: ProxyBatch, *, seed: int = 0,
                init: str = "torch") -> dict[str, ProxyScore]:
    """Each proxy of `names` on a fresh copy of `model` (re-initialised by `init` with `seed`, in
    train mode, RNG seeded with `seed`): the same inputs give the same scores. `model` and the
    global RNG state are left as they were."""
    proxies = [get_proxy(name) for name in names]
    if init not in INITS:
        raise OptionError(f"init {init!r} unknown; choose one of {', '.join(INITS)}")
    scores: dict[str, ProxyScore] = {}
    for proxy in proxies:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            start = time.perf_counter()
            net = copy.deepcopy(model)
            reinitialise(net, init)
            net.train()
            value = float(proxy.fn(net, batch))
            scores[proxy.name] = ProxyScore(proxy.name, value, time.perf_counter() - start)
            del net
    return scores
