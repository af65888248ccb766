"""Trained Ternary Quantization (TTQ; Zhu, Han, Mao & Dally, ICLR 2017): ternary weights with two
*learned* per-layer scales.

A layer keeps its full-precision (latent) weight ``w`` and two trainable scalars ``W_p, W_n > 0``.
With the threshold ``delta = t * max|w|`` (``t = 0.05`` in the paper, a policy setting here)::

    w_t = +W_p  where w >  delta        (the set I_p)
    w_t =  0    where |w| <= delta
    w_t = -W_n  where w < -delta        (the set I_n)

Backward, with ``g = dL/dw_t`` (the paper's gradient equations):

- ``dL/dW_p = sum_{I_p} g``; ``dL/dW_n = -sum_{I_n} g``. The paper prints the equation for
  ``W_n`` without the minus; we follow the chain rule of ``w_t = -W_n`` on I_n, since with a plus
  gradient descent would move ``W_n`` away from the loss minimum (a sign convention: the magnitude
  is the paper's sum over I_n).
- latent weights: ``W_p * g`` on I_p, ``W_n * g`` on I_n, ``g`` (plain straight-through) in the
  zero region.

Two choices of ours: the paper first divides the pretrained weights by their maximum so the latent
weights lie in [-1, 1]; we keep the layer's own weight as the latent one (the parameter is shared
with the float model, and the assignment ``|w| > t * max|w|`` is invariant to that rescaling).
``W_p`` / ``W_n`` start at the mean |w| of the weights above / below the threshold (the value that
minimises the L2 error of the first ternarisation, as TWN's alpha), in the weight's own units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TTQ_THRESHOLD", "add_ttq_scales", "initial_ttq_scales", "remove_ttq_scales", "ttq_threshold", "ttq_weight"]

TTQ_THRESHOLD = 0.05  # Zhu et al.: t = 0.05 on CIFAR-10 and ImageNet


class _TernaryTTQ(torch.autograd.Function):
    """The ternary weight of the module docstring with the paper's scaled gradients."""

    @staticmethod
    def forward(ctx: object, weight: Tensor, positive: Tensor, negative: Tensor, delta: Tensor) -> Tensor:
        upper, lower = weight > delta, weight < -delta
        ctx.save_for_backward(upper, lower, positive, negative)
        zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
        return torch.where(upper, positive.to(weight.dtype), torch.where(lower, -negative.to(weight.dtype), zero))

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        upper, lower, positive, negative = ctx.saved_tensors
        scaled = torch.where(upper, positive * grad, torch.where(lower, negative * grad, grad))
        grad_positive = (grad * upper).sum().reshape(positive.shape)
        grad_negative = -(grad * lower).sum().reshape(negative.shape)
        return scaled, grad_positive, grad_negative, None


def ttq_threshold(weight: Tensor, t: float = TTQ_THRESHOLD) -> Tensor:
    """``delta = t * max|w|`` over the whole layer (no gradient)."""
    return t * weight.detach().abs().max()


def ttq_weight(weight: Tensor, positive: Tensor, negative: Tensor, t: float = TTQ_THRESHOLD) -> Tensor:
    """The ternary weight in ``{-W_n, 0, +W_p}`` (same shape as ``weight``), differentiable in all three."""
    return _TernaryTTQ.apply(weight, positive, negative, ttq_threshold(weight, t))


@torch.no_grad()
def initial_ttq_scales(weight: Tensor, t: float = TTQ_THRESHOLD) -> tuple[float, float]:
    """(W_p, W_n): mean |w| of the weights above ``delta`` and below ``-delta``; a side with no
    weight beyond the threshold takes the other side's value (0.0 for an all-zero weight)."""
    delta = ttq_threshold(weight, t)
    above, below = weight[weight > delta], weight[weight < -delta]
    positive = float(above.mean()) if above.numel() else None
    negative = float(-below.mean()) if below.numel() else None
    fallback = positive if positive is not None else negative if negative is not None else 0.0
    return (positive if positive is not None else fallback, negative if negative is not None else fallback)


def add_ttq_scales(layer: nn.Module, t: float) -> None:
    """Give a conv/linear layer its trainable ``ttq_positive`` / ``ttq_negative`` scalars (kept if
    it already has them: a layer that stays TTQ keeps what it learned) and threshold ``t``."""
    layer.ttq_threshold = t
    if isinstance(getattr(layer, "ttq_positive", None), nn.Parameter):
        return
    positive, negative = initial_ttq_scales(layer.weight, t)
    options = {"dtype": layer.weight.dtype, "device": layer.weight.device}
    layer.ttq_positive = nn.Parameter(torch.tensor(positive, **options))
    layer.ttq_negative = nn.Parameter(torch.tensor(negative, **options))


def remove_ttq_scales(layer: nn.Module) -> None:
    for key in ("ttq_positive", "ttq_negative"):
        if key in layer._parameters:
            del layer._parameters[key]
