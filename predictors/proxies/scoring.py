"""Scoring a model with several proxies: each on its own copy, seeded, timed, with no side effect
on the caller (the model's weights, buffers, mode and gradients, and the global torch RNG are as
they were). Also the mini-batch and the initialisation the published NB201 scores used.

Protocol (NAS-Bench-Suite-Zero's, the source of the published NB201 scores): one mini-batch of
64 training images, normalised with CIFAR-10's mean and std; a freshly built network with
PyTorch's default layer initialisation; train mode (BN on batch statistics).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from predictors.proxies.base import ProxyBatch, get_proxy
from search_spaces.errors import OptionError

# CIFAR-10's per-channel mean and std on [0, 1] pixels (the usual training normalisation)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BATCH_SIZE = 64
INITS = ("torch", "as-built")


@dataclass(frozen=True)
class ProxyScore:
    name: str
    value: float
    seconds: float


def make_batch(images: np.ndarray, labels: np.ndarray, *, size: int = BATCH_SIZE, seed: int = 0,
               num_classes: int = 10, mean: tuple[float, ...] = CIFAR10_MEAN,
               std: tuple[float, ...] = CIFAR10_STD) -> ProxyBatch:
    """`size` images drawn without replacement by `seed` from uint8 NCHW `images`, scaled to [0, 1]
    and normalised per channel. Uses its own numpy generator (no global RNG)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_batch: images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if not 1 < size <= len(images):
        raise OptionError(f"proxy batch size {size} must be in 2..{len(images)} (the images available)")
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=size, replace=False))
    inputs = torch.from_numpy(images[chosen].astype(np.float32) / 255.0)
    inputs = (inputs - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return ProxyBatch(inputs.contiguous(), torch.from_numpy(labels[chosen].astype(np.int64)), num_classes)


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
