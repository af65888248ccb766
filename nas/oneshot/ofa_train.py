"""Training an elastic supernet with the sandwich rule or progressive shrinking, with in-place
distillation (see `OFATrainConfig`, `ofa_schedule`), epoch-checkpointed so that a killed training resumes where it stopped.

Determinism: epoch e's data order, sub-network draws and dropout come from generators seeded
with (seed, e), not from state carried across epochs; with the weights and optimizer state
restored from the checkpoint, a resumed training therefore repeats exactly what an
uninterrupted one does (bit-identical on CPU). Channels are re-sorted by importance after every
epoch (before the checkpoint), so the order is part of the saved weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_checkpoint import check_resumable, load_supernet, load_weights_into, read_state, save_checkpoint
from nas.oneshot.ofa_config import OFATrainConfig
from nas.oneshot.ofa_eval import subnet_accuracy
from nas.oneshot.ofa_schedule import EpochPlan, epoch_plan
from nas.training.data import DataSplits
from nas.training.device import cuda_devices, memory_format, module_device, resolve_device
from nas.training.train import warmup_cosine_lr
from search_spaces.errors import DatasetError

__all__ = ["OFATrainConfig", "SupernetTrainingError", "check_schedule", "load_supernet", "train_supernet"]

logger = logging.getLogger(__name__)


class SupernetTrainingError(RuntimeError):
    """The loss or gradient became non-finite; the message names epoch, step and sub-network."""


def soft_cross_entropy(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Cross-entropy against the teacher's softened distribution, times T^2 (Hinton et al., 2015)
    so its gradient scale does not depend on T."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    return -(target * F.log_softmax(logits / temperature, dim=1)).sum(dim=1).mean() * temperature**2


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def batches(data: DataSplits, batch_size: int, generator: torch.Generator,
            limit: int) -> Iterator[tuple[Tensor, Tensor]]:
    images, labels = data.train.tensors[0], data.train.tensors[1]
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if n > batch_size else n  # a ragged 1-image batch breaks BatchNorm
    for count, index in enumerate(order[:stop].split(batch_size)):
        if count == limit:
            return
        yield images[index], labels[index]


def steps_per_epoch(data: DataSplits, config: OFATrainConfig) -> int:
    n = len(data.train)
    steps = n // config.batch_size if n > config.batch_size else 1
    return steps if config.max_batches_per_epoch is None else min(steps, config.max_batches_per_epoch)



def build_optimizer(supernet: ElasticSupernet, config: OFATrainConfig) -> torch.optim.SGD:
    # no weight decay on BN affine parameters and the kernel transforms (OFA's `no_decay_keys`)
    decay, no_decay = [], []
    for name, parameter in supernet.named_parameters():
        plain = parameter.dim() > 1 and "kernel_transform" not in name
        (decay if plain else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def check_data(supernet: ElasticSupernet, data: DataSplits) -> None:
    space = supernet.space
    if data.resolution != space.resolution or data.num_classes != space.num_classes:
        raise DatasetError(f"dataset {data.name!r} is {data.resolution} px with {data.num_classes} classes; the "
                           f"supernet's space wants {space.resolution} px and {space.num_classes} classes")
    if len(data.train) == 0 or len(data.val) == 0:
        raise DatasetError(f"dataset {data.name!r}: the train and val splits must not be empty")


def check_schedule(supernet: ElasticSupernet, config: OFATrainConfig) -> list[frozenset[str]]:
    """The supernet's phases; `OptionError` when `config.phase_fractions` does not fit them."""
    phases = supernet.phases()
    epoch_plan(1, config.epochs, config.schedule, phases, config.phase_fractions)
    return phases


def train_supernet(supernet: ElasticSupernet, data: DataSplits, config: OFATrainConfig, checkpoint_dir: Path, *,
                   progress: bool = True) -> dict[str, Any]:
    """Train `supernet` for `config.epochs`, resuming from `checkpoint_dir` when it holds a
    checkpoint of the same space and settings. Returns {"epoch", "history", "wall_s"}; the
    supernet is left on its original device, in eval mode, its largest network active."""
    checkpoint_dir = Path(checkpoint_dir)
    check_data(supernet, data)
    device = resolve_device(config.device)
    home = module_device(supernet)
    optimizer = build_optimizer(supernet, config)
    epoch, history = 0, []
    state = read_state(checkpoint_dir)
    if state is not None:
        check_resumable(state, supernet, config, checkpoint_dir)
        load_weights_into(state, supernet, optimizer, checkpoint_dir)
        epoch, history = int(state["epoch"]), list(state["history"])
        logger.info("supernet: resumed after epoch %d/%d from %s", epoch, config.epochs, checkpoint_dir)
    supernet.epoch = epoch
    phases = check_schedule(supernet, config)
    start = time.perf_counter()
    bar = _Bar(progress, config.epochs * steps_per_epoch(data, config), epoch * steps_per_epoch(data, config))
    try:
        supernet.to(device, memory_format=memory_format(device))
        _move_optimizer_state(optimizer, device)
        while epoch < config.epochs:
            epoch += 1
            with torch.random.fork_rng(devices=cuda_devices(device)):
                torch.manual_seed(epoch_seed(config.seed, epoch))
                plan = epoch_plan(epoch, config.epochs, config.schedule, phases, config.phase_fractions)
                record = _train_epoch(supernet, optimizer, data, config, epoch, plan, device, bar)
            if config.reorder_channels:
                supernet.reorder_channels(optimizer)
            supernet.epoch = epoch
            for which in ("largest", "smallest"):
                arch = getattr(supernet, which)()
                record[f"val_accuracy_{which}"] = subnet_accuracy(
                    supernet, arch, data, calibration_images=config.eval_calibration_images, device=str(device))
            history.append(record)
            smallest = "-" if record["loss_smallest"] is None else f"{record['loss_smallest']:.4f}"
            logger.info("supernet epoch %d/%d (phase %d): loss largest %.4f smallest %s, val acc largest %.4f "
                        "smallest %.4f, %.1fs", epoch, config.epochs, record["phase"], record["loss_largest"],
                        smallest, record["val_accuracy_largest"], record["val_accuracy_smallest"], record["time_s"])
            save_checkpoint(supernet, optimizer, config, epoch, history, checkpoint_dir)
    finally:
        bar.close()
        supernet.to(home, memory_format=torch.contiguous_format)
        supernet.set_active(supernet.largest())
        supernet.eval()
    return {"epoch": epoch, "history": history, "wall_s": time.perf_counter() - start}


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for values in optimizer.state.values():
        for key, value in values.items():
            if torch.is_tensor(value) and value.dim() > 0:
                values[key] = value.to(device)


def _train_epoch(supernet: ElasticSupernet, optimizer: torch.optim.Optimizer, data: DataSplits,
                 config: OFATrainConfig, epoch: int, plan: EpochPlan, device: torch.device,
                 bar: _Bar) -> dict[str, Any]:
    """One epoch: per step the largest on the labels, then (unless the phase frees no dimension:
    the largest alone) the phase's smallest and random sub-networks on its soft logits."""
    steps = steps_per_epoch(data, config)
    total_steps = steps * plan.cycle_epochs
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    rng = np.random.default_rng([config.seed, epoch])
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    smallest, largest = supernet.smallest(plan.elastic), supernet.largest()
    distil = plan.elastic is None or len(plan.elastic) > 0
    sums = {"largest": 0.0, "smallest": 0.0, "random": 0.0}
    began = time.perf_counter()
    supernet.train()
    for step, (images, labels) in enumerate(batches(data, config.batch_size, generator, steps), start=1):
        lr = warmup_cosine_lr((epoch - plan.first_epoch) * steps + step - 1, total_steps, 0, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, memory_format=memory_format(device), non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        supernet.set_active(largest)
        logits = supernet(images)
        loss = criterion(logits, labels)
        _backward(loss, epoch, step, "largest")
        sums["largest"] += loss.item()
        teacher = logits.detach()
        students = [("smallest", smallest)] + [("random", supernet.sample(rng, config.sampling, plan.elastic))
                                             for _ in range(config.random_subnets)] if distil else []
        for name, arch in students:
            supernet.set_active(arch)
            out = supernet(images)
            loss = config.kd_weight * soft_cross_entropy(out, teacher, config.kd_temperature)
            if config.kd_weight < 1:
                loss = loss + (1 - config.kd_weight) * criterion(out, labels)
            _backward(loss, epoch, step, name)
            sums[name] += loss.item() / (config.random_subnets if name == "random" else 1)
        if config.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(supernet.parameters(), config.grad_clip)
            if not torch.isfinite(norm).item():
                raise SupernetTrainingError(f"non-finite gradient norm at epoch {epoch} step {step}")
        optimizer.step()
        bar.advance()
    losses = {f"loss_{k}": v / steps if distil or k == "largest" else None for k, v in sums.items()}
    elastic = None if plan.elastic is None else sorted(plan.elastic)
    return {"epoch": epoch, "phase": plan.phase, "elastic": elastic, **losses, "steps": steps, "lr_last": lr,
            "time_s": time.perf_counter() - began}


def _backward(loss: Tensor, epoch: int, step: int, which: str) -> None:
    if not math.isfinite(loss.item()):
        raise SupernetTrainingError(f"non-finite loss of the {which} sub-network at epoch {epoch} step {step}")
    loss.backward()


class _Bar:
    """A rich progress bar over all steps of the run (a nicety: absent without rich)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.progress: Any = None
        if not enabled:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return
        self.progress = Progress(TextColumn("supernet"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 transient=True)
        self.task = self.progress.add_task("train", total=total, completed=completed)
        self.progress.start()

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
