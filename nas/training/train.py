"""The one train/evaluate loop: search trials, retraining and compression fine-tuning all use it.

Contract, in brief:

- Determinism: the shuffle order comes from a ``torch.Generator`` seeded with ``config.seed``,
  and the global torch RNG (dropout, stochastic depth) is re-seeded with ``config.seed`` inside
  ``torch.random.fork_rng`` so the caller's RNG state is left untouched. Weight *initialisation*
  is the caller's business: call ``torch.manual_seed(s)`` before building the model. On CPU
  the same model + data + config gives bit-identical loss histories; on CUDA cuDNN may pick
  non-deterministic kernels, so expect agreement to a few decimals only.
- Devices: ``model`` (and ``teacher``) are moved to ``config.device`` in place (channels-last
  on CPU, faster there) and moved back, in the default layout, to the device their first
  parameter was on when the call returns -- also when an exception escapes. Left in eval mode.
- Failures: a NaN/inf loss (or gradient norm, when clipping) ends training with
  ``status="failed"`` and a reason naming epoch and step; any *exception* in a step propagates
  (the search runner records it as a failed trial with its traceback).
- Epochs and steps are numbered from 1 in reasons, logs and ``on_epoch``.
"""

from __future__ import annotations

import logging
import math
import time
from itertools import islice
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nas.training.augment import AUGMENTATIONS, crop_flip
from nas.training.data import DataSplits
from nas.training.device import cuda_devices, memory_format, module_device, resolve_device
from search_spaces.errors import DatasetError, OptionError

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainReport", "evaluate", "resolve_device", "train"]

logger = logging.getLogger(__name__)
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DistillLoss = Callable[[Tensor, Tensor, Tensor], Tensor]
EpochCallback = Callable[[int, dict[str, float]], bool | None]


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; validated on construction.

    ``lr=None`` means the optimizer's default (:data:`DEFAULT_LR`: 0.05 for SGD, 1e-3 for
    AdamW), resolved by :attr:`effective_lr` -- kept unresolved so ``dataclasses.replace`` with
    another optimizer does not carry the wrong default along. ``momentum`` and ``nesterov``
    apply to SGD only. ``max_batches_per_epoch`` shortens epochs (and the cosine schedule with
    them) for quick proxy trials.
    """

    # metadata: what `nas search` needs to offer the field as an option (nas.search.config)
    epochs: int = field(default=3, metadata={"help": "Training epochs (per trial in a search).", "min": 1})
    batch_size: int = field(default=64, metadata={"help": "Training batch size.", "min": 1})
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 4e-5
    nesterov: bool = True
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "auto"
    grad_clip: float | None = 5.0
    max_batches_per_epoch: int | None = None
    eval_batch_size: int = 256
    augment: str = field(default="none", metadata={"help": "none | crop-flip (pad-4 random crop + flip).", "min": None})
    # sparsity penalties added to the loss (compress.regularize): SSL group lasso on conv filters and
    # channels, network slimming's L1 on BN gammas; no `nas search` flag: they serve compression runs
    group_lasso: float = 0.0
    bn_l1: float = 0.0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> OptionError:
            return OptionError(f"TrainConfig.{name}={getattr(self, name)!r}: expected {expected}")

        for name in ("epochs", "batch_size", "eval_batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an int >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {list(OPTIMIZERS)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a finite float > 0, or None for the optimizer's default")
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", "a float in [0, 1)")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0.0:
            raise bad("nesterov", "False when momentum is 0 (Nesterov needs momentum)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite float >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "a float in [0, 1)")
        if self.augment not in AUGMENTATIONS:
            raise bad("augment", f"one of {list(AUGMENTATIONS)}")
        if not 0.0 <= self.warmup_epochs <= self.epochs:
            raise bad("warmup_epochs", f"a float in [0, epochs={self.epochs}]")
        if not is_int(self.seed):
            raise bad("seed", "an int")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise bad("grad_clip", "None or a finite float > 0")
        if self.max_batches_per_epoch is not None and (
            not is_int(self.max_batches_per_epoch) or self.max_batches_per_epoch < 1
        ):
            raise bad("max_batches_per_epoch", "None or an int >= 1")
        for name, value in (("group_lasso", self.group_lasso), ("bn_l1", self.bn_l1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise bad(name, "a finite float >= 0 (0: no penalty)")
        if self.device != "auto":
            # syntax only: a config is data and may be written on a machine without the device;
            # availability is checked when train() resolves it
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'") from error

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass
class TrainReport:
    """What one run produced. ``val_accuracy`` is the last completed epoch's (0.0 if none).

    ``status`` is ``"ok"`` or ``"failed"``; ``reason`` explains a failure, or an early stop
    requested by ``on_epoch`` (status stays ``"ok"``). ``train_time_s`` is the wall time of the
    epochs including their val evaluations, not the final test evaluation.
    """

    val_accuracy: float
    test_accuracy: float | None
    train_loss: list[float] = field(default_factory=list)
    val_accuracy_per_epoch: list[float] = field(default_factory=list)
    epochs_run: int = 0
    train_time_s: float = 0.0
    status: str = "ok"
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to ``base_lr``, then cosine decay to 0 at ``total_steps`` (0-based step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(dataset: TensorDataset, batch_size: int, generator: torch.Generator | None
             ) -> Iterator[tuple[Tensor, Tensor]]:
    """Index the in-memory tensors directly: the same shuffle a DataLoader with this
    generator would give, without per-sample collation (which dominates tiny trials)."""
    images, labels = dataset.tensors[0], dataset.tensors[1]
    n = len(labels)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    # drop a ragged last batch while training: a 1-image batch breaks BatchNorm after pooling
    stop = n - n % batch_size if generator is not None and n > batch_size else n
    for index in order[:stop].split(batch_size):
        yield images[index], labels[index]


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train(): the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.effective_lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=config.nesterov,
        )
    return torch.optim.AdamW(params, lr=config.effective_lr, weight_decay=config.weight_decay)


def train(model: nn.Module, data: DataSplits, config: TrainConfig, *, on_epoch: EpochCallback | None = None,
          teacher: nn.Module | None = None, distill_loss: DistillLoss | None = None, evaluate_test: bool = False,
          progress: bool = False) -> TrainReport:
    """Train ``model`` on ``data.train``, evaluating on ``data.val`` after every epoch.

    ``on_epoch(epoch, metrics)`` is called after each epoch with ``epoch`` (from 1),
    ``train_loss``, ``val_accuracy``, ``lr`` and ``elapsed_s``; returning True stops training
    (for ASHA-style early stopping; the schedule is not shortened). With ``teacher`` and
    ``distill_loss``, the loss is ``distill_loss(student_logits, teacher_logits, labels)``
    instead of cross-entropy (``label_smoothing`` is then unused); the teacher runs in eval mode
    without gradients and its mode is restored afterwards.
    """
    if (teacher is None) != (distill_loss is None):
        raise ValueError("train(): teacher and distill_loss must be given together")
    for split in ("train", "val"):
        if len(getattr(data, split)) == 0:
            raise DatasetError(f"train(): data.{split} of {data.name!r} is empty")
    device = resolve_device(config.device)
    home = module_device(model)
    teacher_home = module_device(teacher) if teacher is not None else None
    teacher_was_training = teacher.training if teacher is not None else False
    try:
        with torch.random.fork_rng(devices=cuda_devices(device)):
            torch.manual_seed(config.seed)
            return _run(model, data, config, device, on_epoch, teacher, distill_loss, evaluate_test, progress)
    finally:
        model.to(home, memory_format=torch.contiguous_format)  # safetensors and export want contiguous weights
        if teacher is not None and teacher_home is not None:
            teacher.to(teacher_home, memory_format=torch.contiguous_format).train(teacher_was_training)


@dataclass(frozen=True)
class _Schedule:
    """How many optimizer steps an epoch and the run take, and the learning rate at each."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float

    @classmethod
    def of(cls, n_train: int, config: TrainConfig) -> _Schedule:
        steps_per_epoch = n_train // config.batch_size if n_train > config.batch_size else 1
        if config.max_batches_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, config.max_batches_per_epoch)
        return cls(steps_per_epoch, steps_per_epoch * config.epochs,
                   round(config.warmup_epochs * steps_per_epoch), config.effective_lr)

    def lr(self, step: int) -> float:
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.base_lr)


@dataclass
class _Loop:
    """What stays fixed over one training run's epochs and steps."""

    model: nn.Module
    config: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    schedule: _Schedule
    loss_of: Callable[[Tensor, Tensor], Tensor]  # (images, labels) -> loss, run on the model
    bar: Any
    augment: torch.Generator | None  # crop-flip's own generator (seed + 1); None: no augmentation
    step: int = 0
    lr: float = 0.0


def _loss_function(model: nn.Module, config: TrainConfig, teacher: nn.Module | None,
                   distill_loss: DistillLoss | None) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy, or the distillation loss against the teacher's logits; plus the sparsity penalty."""
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    penalty = None
    if config.group_lasso or config.bn_l1:
        from compress.regularize import sparsity_penalty  # deferred: `compress` costs a second to import
        penalty = sparsity_penalty(model, config.group_lasso, config.bn_l1)

    def loss_of(images: Tensor, labels: Tensor) -> Tensor:
        logits = model(images)
        if teacher is not None and distill_loss is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = distill_loss(logits, teacher_logits, labels)
        else:
            loss = criterion(logits, labels)
        return loss if penalty is None else loss + penalty()

    return loss_of


def _train_epoch(loop: _Loop, data: DataSplits, generator: torch.Generator, epoch: int) -> float | str:
    """One epoch of steps: the mean loss, or the reason training failed (a non-finite value)."""
    loop.model.train()
    loss_sum = torch.zeros((), device=loop.device, dtype=torch.float64)
    batches = islice(_batches(data.train, loop.config.batch_size, generator), loop.schedule.steps_per_epoch)
    for step_in_epoch, (images, labels) in enumerate(batches, start=1):
        loop.lr = loop.schedule.lr(loop.step)
        for group in loop.optimizer.param_groups:
            group["lr"] = loop.lr
        images = crop_flip(images, loop.augment) if loop.augment is not None else images
        images = images.to(loop.device, memory_format=memory_format(loop.device), non_blocking=True)
        loss = loop.loss_of(images, labels.to(loop.device, non_blocking=True))
        # one host sync per step: the price of naming the exact failing step
        if not torch.isfinite(loss).item():
            return f"non-finite loss at epoch {epoch} step {step_in_epoch}"
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if loop.config.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(loop.model.parameters(), loop.config.grad_clip)
            if not torch.isfinite(norm).item():
                return f"non-finite gradient norm at epoch {epoch} step {step_in_epoch}"
        loop.optimizer.step()
        loss_sum += loss.detach()
        loop.step += 1
        if loop.bar is not None:
            loop.bar.update(1)
    return float(loss_sum.item()) / loop.schedule.steps_per_epoch


def _end_of_epoch(loop: _Loop, data: DataSplits, report: TrainReport, epoch: int, epoch_loss: float,
                  start: float, on_epoch: EpochCallback | None) -> bool:
    """Evaluate on val, record and log the epoch; True when `on_epoch` stops training early."""
    config = loop.config
    val_accuracy = _accuracy(loop.model, data.val, loop.device, config.eval_batch_size)
    report.train_loss.append(epoch_loss)
    report.val_accuracy_per_epoch.append(val_accuracy)
    report.val_accuracy = val_accuracy
    report.epochs_run = epoch
    elapsed = time.perf_counter() - start
    logger.info("epoch %d/%d: loss %.4f, val acc %.4f, lr %.4g, %.1fs",
                epoch, config.epochs, epoch_loss, val_accuracy, loop.lr, elapsed)
    if on_epoch is None:
        return False
    metrics = {"epoch": float(epoch), "train_loss": epoch_loss,
               "val_accuracy": val_accuracy, "lr": loop.lr, "elapsed_s": elapsed}
    if on_epoch(epoch, metrics) is True and epoch < config.epochs:
        report.reason = f"stopped early by on_epoch after epoch {epoch}"
        logger.info(report.reason)
        return True
    return False


def _run(model: nn.Module, data: DataSplits, config: TrainConfig, device: torch.device, on_epoch: EpochCallback | None,
         teacher: nn.Module | None, distill_loss: DistillLoss | None, evaluate_test: bool, progress: bool
         ) -> TrainReport:
    model.to(device, memory_format=memory_format(device))
    if teacher is not None:
        teacher.to(device, memory_format=memory_format(device)).eval()
    optimizer = _build_optimizer(model, config)
    schedule = _Schedule.of(len(data.train), config)
    loop = _Loop(model, config, device, optimizer, schedule, _loss_function(model, config, teacher, distill_loss),
                 _progress_bar(schedule.total_steps, data.name) if progress else None,
                 torch.Generator().manual_seed(config.seed + 1) if config.augment != "none" else None,
                 lr=schedule.base_lr)
    generator = torch.Generator().manual_seed(config.seed)
    report = TrainReport(val_accuracy=0.0, test_accuracy=None)
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_loss = _train_epoch(loop, data, generator, epoch)
        if isinstance(epoch_loss, str):
            report.status, report.reason = "failed", epoch_loss
            logger.warning("training failed: %s", epoch_loss)
            break
        if _end_of_epoch(loop, data, report, epoch, epoch_loss, start, on_epoch):
            break
    report.train_time_s = time.perf_counter() - start
    if loop.bar is not None:
        loop.bar.close()
    if evaluate_test and report.status == "ok":
        report.test_accuracy = _accuracy(model, data.test, device, config.eval_batch_size)
    return report


def _progress_bar(total: int, name: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; training goes on without it
        logger.info("progress=True but tqdm is not installed; logging epochs only")
        return None
    return tqdm(total=total, desc=f"train {name}", unit="step", leave=False)


@torch.no_grad()
def _accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int) -> float:
    """Top-1 accuracy of an already-placed model."""
    model.eval()
    if isinstance(dataset, TensorDataset):
        batches: Any = _batches(dataset, batch_size, None)
    else:
        batches = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    correct = total = 0
    for images, labels in batches:
        logits = model(images.to(device, non_blocking=True))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        total += len(labels)
    if total == 0:
        raise DatasetError("evaluate(): the dataset is empty")
    return correct / total


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto") -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``dataset`` (items are ``(image, label)``).

    The model is moved to ``device`` for the call and back afterwards; its train/eval mode is
    restored too, so evaluating never changes the caller's model.
    """
    target = resolve_device(device)
    home = module_device(model)
    was_training = model.training
    try:
        model.to(target)
        return _accuracy(model, dataset, target, batch_size)
    finally:
        model.to(home).train(was_training)
