"""Unstructured magnitude pruning: per-weight masks that training keeps at zero.

The shared first stage of Deep Compression (Han et al., ICLR 2016) and of the lottery-ticket
procedure (Frankle & Carbin, ICLR 2019):

    masks = magnitude_masks(model, 0.8)            # 80% of every prunable weight tensor set to 0
    apply_masks(model, masks)                      # weight = raw * mask: zeros stay zero in training
    ... train ...
    remove_masks(model)                            # bake the zeros in; plain weights again

Prunable tensors are the weights of every conv and linear layer (biases and batch-norm stay
dense: they are a negligible share of the bits). Within a tensor the smallest |w| go first; ties
at the threshold are broken by position, so the pruned count is exact. ``scope="layer"`` prunes
each tensor to the same sparsity; ``scope="global"`` ranks all prunable weights together (layers
with many redundant weights give up more), as the lottery-ticket paper does for conv nets.

Masks are ``torch.nn.utils.parametrize`` parametrizations, so the gradient of a pruned weight is
zero and any optimizer, the one train loop included, leaves it at zero; `remove_masks` restores
ordinary parameters (and state-dict keys) holding the masked values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from compress.policy import PolicyError

SCOPES = ("layer", "global")


class _Mask(nn.Module):
    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def prunable_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers by module name, in model order: the tensors magnitude pruning touches."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}


def _check_sparsity(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise PolicyError(f"sparsity of {name!r} = {value!r}: expected a fraction in [0, 1)")


def _keep_top(scores: Tensor, prune_count: int) -> Tensor:
    """A 0/1 mask shaped like `scores` with the `prune_count` smallest entries set to 0."""
    flat = torch.ones(scores.numel(), dtype=scores.dtype, device=scores.device)
    if prune_count > 0:
        # stable sort: equal magnitudes are pruned in position order, so the count is exact
        order = torch.sort(scores.flatten(), stable=True).indices
        flat[order[:prune_count]] = 0
    return flat.view_as(scores)


def magnitude_masks(model: nn.Module, sparsity: float | Mapping[str, float], *,
                    scope: str = "layer") -> dict[str, Tensor]:
    """Masks (1 = kept) for the prunable layers, pruning the smallest-magnitude weights.

    `sparsity` is one fraction for every layer, or layer name -> fraction (layers not named stay
    dense; an unknown name is a `PolicyError` listing the prunable ones). With ``scope="global"``
    the fraction must be one number: that share of all prunable weights goes, smallest first.
    """
    if scope not in SCOPES:
        raise PolicyError(f"scope={scope!r}: expected one of {list(SCOPES)}")
    layers = prunable_weights(model)
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise PolicyError("sparsity: global scope takes one fraction, not per-layer values")
        unknown = sorted(set(sparsity) - set(layers))
        if unknown:
            raise PolicyError(f"sparsity: unknown layer(s) {unknown}; prunable layers: {list(layers)}")
        ratios = dict(sparsity)
    else:
        ratios = dict.fromkeys(layers, sparsity)
    for name, value in ratios.items():
        _check_sparsity(name, value)
    weights = {name: _weight(layers[name]).detach() for name in ratios}
    if scope == "layer":
        return {name: _keep_top(w.abs(), int(round(ratios[name] * w.numel()))) for name, w in weights.items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    everything = _keep_top(flat, int(round(float(sparsity) * flat.numel())))  # type: ignore[arg-type]
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = everything[start:start + w.numel()].view_as(w).clone()
        start += w.numel()
    return masks


def _weight(module: nn.Module) -> Tensor:
    return module.weight  # the masked value when a mask is applied


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Make each named layer's weight ``raw * mask`` (in place; replaces a mask already there)."""
    layers = prunable_weights(model)
    for name, mask in masks.items():
        if name not in layers:
            raise PolicyError(f"masks: unknown layer {name!r}; prunable layers: {list(layers)}")
        module = layers[name]
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise PolicyError(f"masks[{name!r}]: shape {tuple(mask.shape)}, the weight is {tuple(module.weight.shape)}")
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        with torch.no_grad():
            module.weight.mul_(mask.to(module.weight))  # pruned raw values are 0 too, as Han et al. store them
        parametrize.register_parametrization(module, "weight", _Mask(mask.to(module.weight)))
    return model


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks `apply_masks` put on the model, by layer name."""
    return {name: module.parametrizations.weight[0].mask.clone()
            for name, module in prunable_weights(model).items()
            if parametrize.is_parametrized(module, "weight") and isinstance(module.parametrizations.weight[0], _Mask)}


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the masks in: ordinary weights holding the masked values, the usual state-dict keys.

    Done by hand rather than with `remove_parametrizations`: a deepcopy of a masked model shares
    the generated parametrized class with its original, and torch's removal deletes the class's
    `weight` property, breaking the original too."""
    for module in prunable_weights(model).values():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        if set(module.parametrizations) != {"weight"} or not isinstance(module.parametrizations.weight[0], _Mask):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            continue
        value = module.weight.detach().clone()
        requires_grad = module.parametrizations.weight.original.requires_grad
        del module.parametrizations
        module.__class__ = module.__class__.__bases__[0]
        module.register_parameter("weight", nn.Parameter(value, requires_grad=requires_grad))
    return model


def sparsity_of(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, plus ``"total"`` over all of them."""
    zeros, total, out = 0, 0, {}
    for name, module in prunable_weights(model).items():
        w = _weight(module).detach()
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["total"] = zeros / total if total else 0.0
    return out
