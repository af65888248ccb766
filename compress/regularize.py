"""Sparsity-inducing penalties added to the training loss, so that channel pruning afterwards
removes channels the network has already learned to do without.

- Structured group lasso, SSL (Wen et al., NeurIPS 2016): the sum of the L2 norms of weight
  groups. Filter-wise groups are the output filters ``W[o]`` of every conv; channel-wise groups
  are the input columns ``W[:, c]`` of every dense (``groups == 1``) conv -- in a grouped or
  depthwise conv a column spans unrelated groups, and its filters already are the channels.
  Optionally a depth group per residual block: all conv weights of the residual branch as one
  group, which the penalty can drive to zero as a whole, leaving the shortcut (Wen et al. 3.3).
- Network slimming (Liu et al., ICCV 2017): the L1 norm of every batch-norm scale gamma. Small
  gammas mark the channels the ``bn`` criterion of `compress.prune` removes.

    penalty = sparsity_penalty(model, group_lasso=1e-4, bn_l1=0.0)   # None when both are 0
    loss = criterion(model(x), y) + penalty()

One coefficient weights all SSL groups (the paper tunes filter and channel terms separately; one
knob is enough to compare regularized with unregularized). `TrainConfig.group_lasso` and
`TrainConfig.bn_l1` make the one train loop add it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from compress.policy import PolicyError

__all__ = ["bn_l1_penalty", "group_lasso_penalty", "residual_branches", "sparsity_penalty"]


def _convs(module: nn.Module) -> Iterator[nn.Conv2d]:
    return (m for m in module.modules() if isinstance(m, nn.Conv2d))


def residual_branches(model: nn.Module) -> list[list[nn.Conv2d]]:
    """The convs of each residual branch: a block adding its input back (`residual` True, as MBConv
    sets it, or an identity `shortcut`), minus the convs of a shortcut path."""
    branches = []
    for module in model.modules():
        shortcut = getattr(module, "shortcut", None)
        if getattr(module, "residual", False) is True or isinstance(shortcut, nn.Identity):
            skip = set(_convs(shortcut)) if isinstance(shortcut, nn.Module) else set()
            convs = [conv for conv in _convs(module) if conv not in skip]
            if convs:
                branches.append(convs)
    return branches


def group_lasso_penalty(model: nn.Module, *, filters: bool = True, channels: bool = True,
                        depth: bool = False) -> Tensor:
    """Sum over the chosen SSL groups of each group's L2 norm (unweighted)."""
    terms: list[Tensor] = []
    for conv in _convs(model):
        weight = conv.weight  # masked value when a sparsity mask is applied
        if filters:
            terms.append(weight.flatten(1).norm(dim=1).sum())
        if channels and conv.groups == 1:
            terms.append(weight.transpose(0, 1).flatten(1).norm(dim=1).sum())
    if depth:
        for convs in residual_branches(model):
            terms.append(torch.sqrt(sum(conv.weight.square().sum() for conv in convs)))  # type: ignore[arg-type]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def bn_l1_penalty(model: nn.Module) -> Tensor:
    """Sum of |gamma| over the affine batch norms."""
    gammas = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return torch.stack(gammas).sum() if gammas else torch.zeros(())


def _check(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise PolicyError(f"{name}={value!r}: expected a finite coefficient >= 0")


def sparsity_penalty(model: nn.Module, group_lasso: float = 0.0, bn_l1: float = 0.0, *,
                     depth: bool = False) -> Callable[[], Tensor] | None:
    """``group_lasso * SSL(model) + bn_l1 * sum|gamma|`` as a function of the model's current
    weights (called once per step), or None when both coefficients are 0."""
    _check("group_lasso", group_lasso)
    _check("bn_l1", bn_l1)
    if group_lasso == 0 and bn_l1 == 0:
        return None

    def penalty() -> Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        if group_lasso:
            total = total + group_lasso * group_lasso_penalty(model, depth=depth)
        if bn_l1:
            total = total + bn_l1 * bn_l1_penalty(model)
        return total

    return penalty
