"""`SearchConfig`: everything that defines a search, stored as the run's config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from nas.training.train import TrainConfig
from search_spaces.errors import OptionError

__all__ = ["CONSTRAINTS", "EXECUTION_FIELDS", "SearchConfig"]

CONSTRAINTS = ("hard", "soft")
# Settings of *how* trials run, not *what* is searched: a resumed run may change them.
EXECUTION_FIELDS = ("ray", "ray_address", "workers", "cpus_per_trial", "max_failures")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; stored as the run's config.json."""

    space: str
    latency_budget_ms: float
    lut_path: str
    dataset: str = "digits"
    resolution: int = 32
    num_classes: int | None = None  # None: the dataset's
    space_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the space
    strategy: str = "evolution"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    trials: int = 60
    constraint: str = "hard"
    train: TrainConfig = field(default_factory=TrainConfig)
    train_limit: int | None = None  # cap on training images per trial (a stratified subset)
    ray: bool = False
    ray_address: str | None = None  # implies ray
    workers: int = 1
    cpus_per_trial: float = 1.0
    asha: bool = False
    max_failures: int = 2

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> OptionError:
            return OptionError(f"SearchConfig.{name}={getattr(self, name)!r}: expected {expected}")

        for name in ("space", "dataset", "strategy", "lut_path"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        budget = self.latency_budget_ms
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (math.isfinite(budget) and budget > 0):
            raise bad("latency_budget_ms", "a finite number of milliseconds > 0")
        if not _is_int(self.resolution) or self.resolution < 8:
            raise bad("resolution", "an int >= 8")
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 2):
            raise bad("num_classes", "None (the dataset's) or an int >= 2")
        for name in ("space_options", "strategy_options"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "a JSON object of keyword arguments")
        if not _is_int(self.seed):
            raise bad("seed", "an int")
        if not _is_int(self.trials) or self.trials < 1:
            raise bad("trials", "an int >= 1")
        if self.constraint not in CONSTRAINTS:
            raise bad("constraint", f"one of {list(CONSTRAINTS)}")
        if not isinstance(self.train, TrainConfig):
            raise bad("train", "a TrainConfig")
        if self.train_limit is not None and (not _is_int(self.train_limit) or self.train_limit < 1):
            raise bad("train_limit", "None or an int >= 1")
        if not _is_int(self.workers) or self.workers < 1:
            raise bad("workers", "an int >= 1")
        if isinstance(self.cpus_per_trial, bool) or not isinstance(self.cpus_per_trial, (int, float)) \
                or not self.cpus_per_trial > 0:
            raise bad("cpus_per_trial", "a number > 0 (fractions share a CPU)")
        if not _is_int(self.max_failures) or self.max_failures < 0:
            raise bad("max_failures", "an int >= 0")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address):
            raise bad("ray_address", "None or an address such as 'auto' or '10.0.0.5:6379'")
        if (self.workers > 1 or self.asha) and not self.uses_ray:
            name = "workers" if self.workers > 1 else "asha"
            raise bad(name, "its default unless the search runs on Ray (ray=True or a ray_address)")

    @property
    def uses_ray(self) -> bool:
        return self.ray or self.ray_address is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train"] = asdict(self.train)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise OptionError(f"unknown SearchConfig field(s) {unknown}; allowed: {sorted(names)}")
        values = dict(data)
        if isinstance(values.get("train"), dict):
            train_names = {item.name for item in fields(TrainConfig)}
            wrong = sorted(set(values["train"]) - train_names)
            if wrong:
                raise OptionError(f"unknown SearchConfig.train field(s) {wrong}; allowed: {sorted(train_names)}")
            values["train"] = TrainConfig(**values["train"])
        return cls(**values)

    def resumed_with(self, given: dict[str, Any]) -> SearchConfig:
        """This (stored) config with the settings a user passed on resume. Search settings must
        match what is stored; execution settings (Ray, workers) may change."""
        conflicts = []
        changes = {}
        stored = self.to_dict()
        for name, value in given.items():
            # "train.epochs" names one field of the nested train config
            head, _, sub = name.partition(".")
            if head not in stored or (sub and sub not in stored[head]):
                raise OptionError(f"unknown SearchConfig field {name!r}")
            if value is None:
                continue
            if name == "train" and isinstance(value, TrainConfig):
                value = asdict(value)
            have = stored[head][sub] if sub else stored[head]
            if name in EXECUTION_FIELDS:
                changes[name] = value
            elif value != have:
                conflicts.append(f"{name}={value!r} (the run has {have!r})")
        if conflicts:
            raise OptionError("resume: settings conflict with the run's config.json: " + "; ".join(conflicts)
                             + ". Drop them to resume as configured, or start a new run.")
        return replace(self, **changes)
