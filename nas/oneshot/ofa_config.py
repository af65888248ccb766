"""`OFATrainConfig`: the settings of one elastic-supernet training, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from nas.oneshot.ofa_schedule import SCHEDULES
from search_spaces.errors import OptionError

__all__ = ["OFATrainConfig"]


@dataclass(frozen=True)
class OFATrainConfig:
    """Sandwich-rule training (Yu & Huang, "Universally slimmable networks", ICCV 2019): per step
    the largest sub-network on the labels (with `label_smoothing`), then the smallest and
    `random_subnets` random ones on the largest's detached soft logits (in-place distillation;
    loss = kd_weight * T^2 * soft cross-entropy at temperature T + (1 - kd_weight) * label CE),
    gradients summed, one SGD step (Nesterov momentum, cosine learning rate per step).
    Defaults follow OFA's (Cai et al., ICLR 2020, App.) scaled to small data: lr 0.05 at batch 64,
    weight decay 3e-5, label smoothing 0.1, two random sub-networks.

    `schedule="progressive"`: progressive shrinking instead (`nas.oneshot.ofa_schedule`): the
    epochs split over the phases by `phase_fractions` (None: equally), each phase sampling the
    smallest and random sub-networks of its free dimensions only (none in the first: the largest
    alone), the learning rate's cosine restarted per phase."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-5
    random_subnets: int = 2
    kd_temperature: float = 1.0
    kd_weight: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float | None = 5.0
    max_batches_per_epoch: int | None = None
    sampling: str = "network"  # random sub-networks: uniform over networks, or "choice" (OFA: per dimension)
    reorder_channels: bool = True  # sort inner channels by importance after every epoch
    eval_calibration_images: int = 256  # for the per-epoch val accuracy of the largest / smallest
    schedule: str = "sandwich"  # or "progressive" (progressive shrinking)
    phase_fractions: tuple[float, ...] | None = None  # progressive: share of the epochs per phase
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> OptionError:
            return OptionError(f"OFATrainConfig.{name}={getattr(self, name)!r}: expected {expected}")

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        for name, minimum in (("epochs", 1), ("batch_size", 2), ("random_subnets", 0), ("eval_calibration_images", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < minimum:
                raise bad(name, f"an int >= {minimum}")
        for name in ("lr", "kd_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise bad(name, "a finite float > 0")
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", "a float in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite float >= 0")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise bad("kd_weight", "a float in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "a float in [0, 1)")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise bad("grad_clip", "None or a finite float > 0")
        if self.max_batches_per_epoch is not None and (not is_int(self.max_batches_per_epoch)
                                                       or self.max_batches_per_epoch < 1):
            raise bad("max_batches_per_epoch", "None or an int >= 1")
        if self.sampling not in ("network", "choice"):
            raise bad("sampling", "'network' (uniform over sub-networks) or 'choice' (each dimension uniform)")
        if not isinstance(self.reorder_channels, bool):
            raise bad("reorder_channels", "true or false")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", "'sandwich' (every dimension every step) or 'progressive' (progressive shrinking)")
        if self.phase_fractions is not None:
            if self.schedule != "progressive":
                raise bad("phase_fractions", "None unless schedule='progressive'")
            values = self.phase_fractions
            if (isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not values
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                           for v in values) or abs(sum(values) - 1.0) > 1e-6):
                raise bad("phase_fractions", "a list of floats >= 0, one per phase, summing to 1")
            object.__setattr__(self, "phase_fractions", tuple(float(v) for v in values))
        if not is_int(self.seed):
            raise bad("seed", "an int")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'") from error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OFATrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"OFATrainConfig: unknown field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)
