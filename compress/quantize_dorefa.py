"""DoReFa-Net activations (Zhou, Wu, Ni, Zhou, He & Zou, 2016): clip to [0, 1], then k bits uniformly.

    x_q = round((2^k - 1) * clip(x, 0, 1)) / (2^k - 1)

Gradient: straight through the rounding, so 1 where ``0 <= x <= 1`` (bounds included) and 0
where the clip cut. Unlike the linear
activation quantizer there is nothing to observe or calibrate: the range is fixed. Its grid is
still an affine one (scale ``1 / (2^k - 1)``, zero point 0), which is what ``quantize_ops`` uses as
the input scale of the bias grid.

The fixed [0, 1] range presumes a non-negative input of about unit scale: the output of a ReLU-like
activation. In MobileNetV2 that holds for the depthwise and projection convs' inputs (ReLU6
outputs); the expansion convs read the residual stream, which is signed -- clipping it at 0
discards half of it, so a policy should keep those linear (``bench.toolbox_lowbit`` does).

DoReFa's k-bit *weights* (``tanh`` normalised to [0, 1], k bits, mapped to [-1, 1]) are not offered:
they would be another family of weight_bits names beside the linear 2..8 (same storage bits, a
different grid), and the study here asks for the 1-2-bit weight family, where TTQ already is.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ACTIVATION_QUANTIZERS", "dorefa_activation", "dorefa_scale"]

ACTIVATION_QUANTIZERS = ("linear", "dorefa")


class _ClipRound(torch.autograd.Function):
    """Forward the DoReFa code; backward 1 on the closed range [0, 1], 0 outside (written out
    rather than left to ``torch.clamp``, whose gradient at the bounds is an implementation detail)."""

    @staticmethod
    def forward(ctx: object, x: Tensor, levels: int) -> Tensor:
        ctx.save_for_backward((x >= 0) & (x <= 1))
        return torch.round(x.clamp(0.0, 1.0) * levels) / levels

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def dorefa_scale(bits: int) -> Tensor:
    """The grid step ``1 / (2^bits - 1)`` as a float32 scalar."""
    return torch.tensor(1.0 / (2**bits - 1), dtype=torch.float32)


def dorefa_activation(x: Tensor, bits: int) -> Tensor:
    """``round((2^bits - 1) * clip(x, 0, 1)) / (2^bits - 1)`` with DoReFa's straight-through gradient."""
    return _ClipRound.apply(x, 2**bits - 1)
