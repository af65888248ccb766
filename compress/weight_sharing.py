"""Trained weight sharing (Deep Compression stage 2, Han et al., ICLR 2016, section 3).

Each layer's kept (non-pruned) weights are clustered by 1-D k-means into k = 2^bits centroids,
initialised LINEARLY between the smallest and largest weight (the paper's best initialisation:
it keeps the rare large weights, which matter most, representable). The layer then computes with

    weight = where(mask, centroids[indices], 0)

a `torch.nn.utils.parametrize` parametrization whose only trainable tensor is `centroids`; autograd
gives each centroid the sum of its members' gradients (the paper's update) and pruned positions
stay exactly zero. `where` rather than ``* mask`` so a pruned weight is +0.0, never -0.0: the
decoded file matches the model bit for bit.

    share_weights(model, bits_policy(model, 5, fc_bits=5))   # after magnitude pruning
    ... fine-tune ...
    tensors = clustered_tensors(model)                        # what the file stores
    remove_sharing(model)                                     # plain weights again

Bits per layer are a policy (layer name -> 1..8; the paper: 8 for conv, 5 for FC layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from compress.policy import PolicyError
from compress.sparsity import current_masks, prunable_weights

MAX_BITS = 8
KMEANS_ITERATIONS = 30


@dataclass(frozen=True)
class ClusteredTensor:
    """A shared-weight tensor as stored: codebook, kept positions (flat, increasing), and each kept
    weight's centroid index."""

    shape: tuple[int, ...]
    bits: int
    codebook: np.ndarray   # float32, 2^bits entries
    positions: np.ndarray  # int64
    indices: np.ndarray    # int64 in [0, 2^bits)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def dense(self) -> np.ndarray:
        out = np.zeros(self.numel, dtype=np.float32)
        out[self.positions] = self.codebook[self.indices]
        return out.reshape(self.shape)


def check_bits(name: str, bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise PolicyError(f"bits of {name!r} = {bits!r}: expected an integer in 1..{MAX_BITS}")
    return bits


def bits_policy(model: nn.Module, bits: int, overrides: Mapping[str, int] | None = None, *,
                fc_bits: int | None = None) -> dict[str, int]:
    """Layer name -> bits: `bits` for every conv, `fc_bits` (default `bits`) for linear layers,
    then `overrides` by name (an unknown name is a `PolicyError` listing the layers)."""
    layers = prunable_weights(model)
    check_bits("--bits", bits)
    if fc_bits is not None:
        check_bits("--fc-bits", fc_bits)
    policy = {name: (fc_bits if fc_bits is not None and isinstance(m, nn.Linear) else bits) for name, m in layers.items()}
    unknown = sorted(set(overrides or {}) - set(layers))
    if unknown:
        raise PolicyError(f"bits per layer: unknown layer(s) {unknown}; layers: {list(layers)}")
    for name, value in (overrides or {}).items():
        policy[name] = check_bits(name, value)
    return policy


def linear_centroids(values: Tensor, k: int) -> Tensor:
    """k centroids evenly spaced over [min, max] of `values` (zeros when there are none)."""
    if values.numel() == 0:
        return torch.zeros(k)
    return torch.linspace(float(values.min()), float(values.max()), k)


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each value (1-D: midpoints of the sorted centroids)."""
    order = np.argsort(centroids, kind="stable")
    ranked = centroids[order]
    return order[np.searchsorted((ranked[1:] + ranked[:-1]) / 2, values, side="left")]


def kmeans_1d(values: Tensor, centroids: Tensor, iterations: int = KMEANS_ITERATIONS) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means from `centroids`: (centroids, indices). An empty cluster keeps its centroid."""
    x = values.detach().cpu().double().numpy()
    c = centroids.detach().cpu().double().numpy().copy()
    indices = assign(x, c)
    for _ in range(iterations):
        sums = np.bincount(indices, weights=x, minlength=c.size)
        counts = np.bincount(indices, minlength=c.size)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new = assign(x, c)
        if np.array_equal(new, indices):
            break
        indices = new
    return torch.from_numpy(c).float(), torch.from_numpy(indices).long()


class _Shared(nn.Module):
    def __init__(self, centroids: Tensor, indices: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("indices", indices)
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:  # the raw weight is unused: the centroids are the layer
        return torch.where(self.mask, self.centroids[self.indices], torch.zeros((), dtype=self.centroids.dtype,
                                                                               device=self.centroids.device))


def share_weights(model: nn.Module, bits: Mapping[str, int]) -> nn.Module:
    """Cluster each named layer's kept weights (mask from `apply_masks`, else its non-zeros) and make
    the layer compute from the shared centroids (in place). Layers not named stay as they are."""
    layers = prunable_weights(model)
    unknown = sorted(set(bits) - set(layers))
    if unknown:
        raise PolicyError(f"bits: unknown layer(s) {unknown}; layers: {list(layers)}")
    masks = current_masks(model)
    for name, layer_bits in bits.items():
        check_bits(name, layer_bits)
        module = layers[name]
        mask = masks[name].bool() if name in masks else module.weight.detach() != 0
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        weight = module.weight.detach()
        kept = weight[mask].flatten()
        centroids, members = kmeans_1d(kept.cpu(), linear_centroids(kept.cpu(), 2 ** layer_bits))
        indices = torch.zeros(weight.numel(), dtype=torch.long)
        indices[mask.flatten().cpu()] = members
        module.weight.requires_grad_(False)  # replaced by the centroids; the optimizer skips it
        parametrize.register_parametrization(module, "weight", _Shared(
            centroids.to(weight), indices.view_as(weight).to(weight.device), mask.to(weight.device)))
    return model


def _shared(module: nn.Module) -> _Shared | None:
    if parametrize.is_parametrized(module, "weight"):
        first = module.parametrizations.weight[0]
        if isinstance(first, _Shared):
            return first
    return None


def clustered_tensors(model: nn.Module) -> dict[str, ClusteredTensor]:
    """State-dict key (``<layer>.weight``) -> its stored form, for every shared layer."""
    out = {}
    for name, module in prunable_weights(model).items():
        shared = _shared(module)
        if shared is None:
            continue
        codebook = shared.centroids.detach().cpu().float().numpy().copy()
        mask = shared.mask.detach().cpu().flatten().numpy()
        positions = np.flatnonzero(mask).astype(np.int64)
        indices = shared.indices.detach().cpu().flatten().numpy()[positions].astype(np.int64)
        bits = int(np.log2(codebook.size))
        out[f"{name}.weight" if name else "weight"] = ClusteredTensor(
            tuple(shared.mask.shape), bits, codebook, positions, indices)
    return out


def remove_sharing(model: nn.Module) -> nn.Module:
    """Bake the shared weights in: ordinary parameters holding centroid values, usual keys."""
    for module in prunable_weights(model).values():
        if _shared(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(True)
    return model
