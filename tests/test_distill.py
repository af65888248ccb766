"""Knowledge distillation: the loss on hand-computable numbers, its checks, and its use as
`nas.training.train.train`'s `distill_loss` hook (tests may import nas; compress itself never does)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from compress.distill import DistillationLoss, kd_loss
from nas.training.data import load_dataset
from nas.training.train import TrainConfig, train
from search_spaces.build import build_model
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec

torch.set_num_threads(1)

# student softmax [1/2, 1/2]; teacher softmax at T = 1: [3/4, 1/4]
STUDENT = torch.tensor([[0.0, 0.0]])
TEACHER = torch.tensor([[math.log(3.0), 0.0]])
LABELS = torch.tensor([0])


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_temperature_one_alpha_one_is_the_kl_divergence() -> None:
    expected = kl([0.75, 0.25], [0.5, 0.5])  # 0.75 ln 1.5 + 0.25 ln 0.5 = 0.1308...
    assert kd_loss(STUDENT, TEACHER, LABELS, temperature=1.0, alpha=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(STUDENT, TEACHER, None, temperature=1.0, alpha=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_cross_entropy() -> None:
    assert kd_loss(STUDENT, TEACHER, LABELS, temperature=4.0, alpha=0.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_soft_term_is_scaled_by_t_squared() -> None:
    # at T = 2 the teacher's logits halve: softmax [sqrt 3, 1] / (1 + sqrt 3)
    root = math.sqrt(3.0)
    soft = kl([root / (1 + root), 1 / (1 + root)], [0.5, 0.5])
    assert kd_loss(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=1.0).item() == pytest.approx(4 * soft, rel=1e-6)
    mixed = kd_loss(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=0.25).item()
    assert mixed == pytest.approx(0.25 * 4 * soft + 0.75 * math.log(2), rel=1e-6)


def test_batch_mean_and_no_gradient_into_the_teacher() -> None:
    student = torch.cat([STUDENT, TEACHER]).requires_grad_()
    teacher = torch.cat([TEACHER, TEACHER]).requires_grad_()
    loss = kd_loss(student, teacher, None, temperature=1.0, alpha=1.0)
    # second sample agrees with its teacher (KL 0): the mean halves the first one's KL
    assert loss.item() == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]) / 2, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature=0"):
        DistillationLoss(temperature=0)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="labels are required"):
        kd_loss(STUDENT, TEACHER, None, alpha=0.5)
    with pytest.raises(ValueError, match="differ"):
        kd_loss(STUDENT, torch.zeros(1, 3), LABELS)


class Recording(DistillationLoss):
    def __init__(self, temperature: float, alpha: float) -> None:
        super().__init__(temperature, alpha)
        self.teacher_logits: list[Tensor] = []

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        self.teacher_logits.append(teacher_logits)
        return super().__call__(student_logits, teacher_logits, labels)


def tiny(channels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = ArchSpec(StemSpec(channels), (BlockSpec(Op.MBCONV, channels, 2, 3, 2.0),), HeadSpec(None, dropout=0.0),
                    resolution=8, num_classes=10)
    return build_model(spec)


def test_distillation_loss_plugs_into_the_train_loop() -> None:
    data = load_dataset("synthetic", 8, limit=128)
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", lr=0.05)
    histories = []
    for teacher_seed in (1, 2):
        loss = Recording(temperature=4.0, alpha=1.0)
        teacher = tiny(16, teacher_seed)
        report = train(tiny(8, 0), data, config, teacher=teacher, distill_loss=loss)
        assert report.status == "ok" and len(loss.teacher_logits) == 4  # 128 / 32 steps
        assert all(t.shape == (32, 10) and not t.requires_grad for t in loss.teacher_logits)
        # the teacher ran in eval mode: its batch-norm statistics never moved
        assert torch.equal(teacher.stem[0][1].running_mean, torch.zeros(16))
        histories.append(report.train_loss)
    # same student, data and seed: only the teacher differs, so the loss must have used it
    assert histories[0] != histories[1]
