"""The train/evaluate loop: learning, determinism, failure handling, hooks, config checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from nas.training.data import DataSplits, load_dataset
from nas.training.train import TrainConfig, TrainReport, evaluate, train
from search_spaces.errors import DatasetError, OptionError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic8() -> DataSplits:
    return load_dataset("synthetic", 8)


def tiny_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # initialisation is the caller's business, not train()'s
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.mean(dim=(2, 3))) * float("nan")


FAST = TrainConfig(epochs=3, lr=0.1, device="cpu")


def test_tiny_cnn_learns_above_chance(synthetic8: DataSplits) -> None:
    report = train(tiny_cnn(), synthetic8, FAST, evaluate_test=True)
    assert report.status == "ok" and report.reason is None
    assert report.epochs_run == 3
    assert len(report.train_loss) == 3 and len(report.val_accuracy_per_epoch) == 3
    # measured 0.609 val / 0.602 test on CPU (chance is 0.1); over 25 data x init seeds: 0.47-0.77
    assert report.val_accuracy > 0.35
    assert report.test_accuracy is not None and report.test_accuracy > 0.35
    assert report.train_loss[-1] < report.train_loss[0]
    assert report.val_accuracy == report.val_accuracy_per_epoch[-1]
    assert report.train_time_s > 0


def test_same_seed_same_history(synthetic8: DataSplits) -> None:
    first = train(tiny_cnn(), synthetic8, FAST)
    second = train(tiny_cnn(), synthetic8, FAST)
    assert first.train_loss == second.train_loss
    assert first.val_accuracy_per_epoch == second.val_accuracy_per_epoch
    shuffled = train(tiny_cnn(), synthetic8, dataclasses.replace(FAST, seed=1))
    assert shuffled.train_loss != first.train_loss


def test_nan_loss_fails_with_reason(synthetic8: DataSplits) -> None:
    report = train(NaNModel(), synthetic8, FAST)
    assert report.status == "failed"
    assert report.reason == "non-finite loss at epoch 1 step 1"
    assert report.epochs_run == 0 and report.train_loss == []


def test_exception_in_step_propagates(synthetic8: DataSplits) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(7, 10)  # wrong input width

        def forward(self, x: Tensor) -> Tensor:
            return self.linear(x.flatten(1))

    with pytest.raises(RuntimeError):
        train(Broken(), synthetic8, FAST)


def test_on_epoch_true_stops_after_one_epoch(synthetic8: DataSplits) -> None:
    seen: list[tuple[int, dict[str, float]]] = []

    def stop(epoch: int, metrics: dict[str, float]) -> bool:
        seen.append((epoch, metrics))
        return True

    report = train(tiny_cnn(), synthetic8, FAST, on_epoch=stop)
    assert report.status == "ok" and report.epochs_run == 1
    assert report.reason == "stopped early by on_epoch after epoch 1"
    assert [epoch for epoch, _ in seen] == [1]
    assert seen[0][1]["val_accuracy"] == report.val_accuracy
    assert set(seen[0][1]) >= {"epoch", "train_loss", "val_accuracy", "lr", "elapsed_s"}


def test_on_epoch_none_keeps_going(synthetic8: DataSplits) -> None:
    epochs: list[int] = []
    report = train(tiny_cnn(), synthetic8, dataclasses.replace(FAST, epochs=2),
                   on_epoch=lambda epoch, metrics: epochs.append(epoch))
    assert epochs == [1, 2] and report.epochs_run == 2


def test_distillation_hook_called_and_changes_loss(synthetic8: DataSplits) -> None:
    teacher = tiny_cnn(seed=1).train()
    calls: list[tuple[torch.Size, torch.Size]] = []

    def distill(student: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        assert not teacher_logits.requires_grad  # teacher runs without gradients
        calls.append((student.shape, teacher_logits.shape))
        soft = nn.functional.kl_div(
            student.log_softmax(1), teacher_logits.softmax(1), reduction="batchmean"
        )
        return soft + nn.functional.cross_entropy(student, labels)

    config = dataclasses.replace(FAST, epochs=1)
    plain = train(tiny_cnn(), synthetic8, config)
    distilled = train(tiny_cnn(), synthetic8, config, teacher=teacher, distill_loss=distill)
    assert len(calls) == len(synthetic8.train) // config.batch_size
    assert calls[0] == (torch.Size([64, 10]), torch.Size([64, 10]))
    assert distilled.train_loss != plain.train_loss
    assert teacher.training  # teacher mode restored


def test_teacher_without_loss_rejected(synthetic8: DataSplits) -> None:
    with pytest.raises(ValueError, match="distill_loss"):
        train(tiny_cnn(), synthetic8, FAST, teacher=tiny_cnn())


def test_max_batches_and_warmup(synthetic8: DataSplits) -> None:
    config = TrainConfig(epochs=2, lr=0.1, warmup_epochs=1, max_batches_per_epoch=2,
                         device="cpu", optimizer="adamw")
    lrs: list[float] = []
    report = train(tiny_cnn(), synthetic8, config,
                   on_epoch=lambda epoch, metrics: lrs.append(metrics["lr"]))
    assert report.status == "ok" and report.epochs_run == 2
    # 4 steps: warm-up 0.05, 0.1, then cosine 0.1, then 0.1 * (1 + cos(pi/2)) / 2 = 0.05
    assert lrs == pytest.approx([0.1, 0.05])


def test_evaluate_restores_mode_and_counts(synthetic8: DataSplits) -> None:
    model = tiny_cnn().train()
    accuracy = evaluate(model, synthetic8.val, batch_size=50, device="cpu")
    assert 0.0 <= accuracy <= 1.0
    assert accuracy * len(synthetic8.val) == pytest.approx(round(accuracy * len(synthetic8.val)))
    assert model.training


def test_model_returns_to_its_device(synthetic8: DataSplits) -> None:
    # with device="auto" this trains on CUDA where present; the model must come back to CPU
    model = tiny_cnn()
    config = TrainConfig(epochs=1, max_batches_per_epoch=2)
    report = train(model, synthetic8, config, evaluate_test=True)
    assert report.status == "ok" and report.test_accuracy is not None
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not model.training  # left in eval mode, as documented


def test_report_to_dict() -> None:
    report = TrainReport(val_accuracy=0.5, test_accuracy=None)
    assert report.to_dict()["status"] == "ok"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("optimizer", "adam"),
        ("lr", -0.1),
        ("momentum", 1.0),
        ("weight_decay", -1.0),
        ("label_smoothing", 1.0),
        ("warmup_epochs", 5.0),
        ("device", "banana"),
        ("grad_clip", 0.0),
        ("max_batches_per_epoch", 0),
        ("augment", "mixup"),
    ],
)
def test_bad_config_names_field(field: str, value: object) -> None:
    with pytest.raises(OptionError, match=rf"TrainConfig\.{field}="):  # a ValueError too
        TrainConfig(**{field: value})


def test_an_empty_split_is_a_dataset_error(synthetic8: DataSplits) -> None:
    empty = TensorDataset(synthetic8.val.tensors[0][:0], synthetic8.val.tensors[1][:0])
    with pytest.raises(DatasetError, match="data.val .* is empty"):
        train(tiny_cnn(), dataclasses.replace(synthetic8, val=empty), TrainConfig(epochs=1))
    with pytest.raises(DatasetError, match="the dataset is empty"):
        evaluate(tiny_cnn(), empty)


def test_config_default_lr_per_optimizer() -> None:
    assert TrainConfig().effective_lr == 0.05
    assert TrainConfig(optimizer="adamw").effective_lr == 1e-3
    assert dataclasses.replace(TrainConfig(), optimizer="adamw").effective_lr == 1e-3
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig(momentum=0.0)


def test_augmented_training_is_seeded_and_differs_from_plain(synthetic8: DataSplits) -> None:
    augmented = dataclasses.replace(FAST, augment="crop-flip")
    first = train(tiny_cnn(), synthetic8, augmented)
    assert train(tiny_cnn(), synthetic8, augmented).train_loss == first.train_loss
    assert train(tiny_cnn(), synthetic8, FAST).train_loss != first.train_loss


def test_trained_weights_come_back_contiguous(synthetic8: DataSplits) -> None:
    # training runs channels-last on CPU; safetensors and ONNX export want the default layout back
    model = tiny_cnn()
    train(model, synthetic8, TrainConfig(epochs=1, device="cpu"))
    assert all(tensor.is_contiguous() for tensor in model.state_dict().values())
