"""Knowledge distillation loss (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
Network", 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * CE(student, labels)

The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T changes
(the soft gradients shrink as 1/T^2), as the paper prescribes. KL is averaged over the batch
(`reduction="batchmean"`, the mathematically correct mean of per-sample KL).

`DistillationLoss` has the signature `nas.training.train.train` expects for its `distill_loss` hook:
`(student_logits, teacher_logits, labels) -> loss`.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def _check(temperature: float, alpha: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0 (Hinton et al. use 1-20; 4 is common)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1] (weight of the soft, teacher term)")


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton et al.'s loss; `labels` may be None only when alpha == 1 (pure distillation)."""
    _check(temperature, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    loss = student_logits.new_zeros(())
    if alpha > 0:
        # the teacher is a fixed target: no gradient flows into it even if the caller forgot no_grad
        soft_targets = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
        soft_student = F.log_softmax(student_logits / temperature, dim=-1)
        kl = F.kl_div(soft_student, soft_targets, reduction="batchmean", log_target=True)
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        if labels is None:
            raise ValueError(f"labels are required when alpha={alpha} < 1 (the hard-label term has weight 1 - alpha)")
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


class DistillationLoss:
    """`kd_loss` with fixed temperature and alpha, callable as `nas.training.train.train`'s `distill_loss`."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        _check(temperature, alpha)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        return kd_loss(student_logits, teacher_logits, labels, self.temperature, self.alpha)

    def __repr__(self) -> str:
        return f"DistillationLoss(temperature={self.temperature}, alpha={self.alpha})"
