"""`SearchConfig`: everything that defines a search, stored as the run's config.json. Its fields carry
what `nas search` needs to offer them as options, so defaults and help live here only."""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any

from nas.training.train import TrainConfig, is_int
from search_spaces.errors import OptionError

__all__ = ["CONSTRAINTS", "EXECUTION_FIELDS", "SETTINGS", "SearchConfig", "flag_of", "refuse_on_resume"]

CONSTRAINTS = ("hard", "soft")


def setting(help: str, default: Any = MISSING, *, flag: str | None = None, execution: bool = False,
            min: float | None = None, **kwargs: Any) -> Any:
    """A field `nas search` offers: `flag` where it is not --the-name; `execution` for how trials
    run, not what is searched (a resumed run may change it); `min`, the lower bound."""
    return field(default=default, metadata=dict(help=help, flag=flag, execution=execution, min=min), **kwargs)


@dataclass(frozen=True, kw_only=True)  # keyword-only: a default for `space` before required fields
class SearchConfig:
    """Everything that defines a search; stored as the run's config.json."""

    space: str = setting("Search space (`nas spaces` lists them).", "mnasnet")
    latency_budget_ms: float = setting("Latency budget: 6ms, 0.5ms, 500us; a bare number: ms.", flag="--latency-budget")
    lut_path: str = setting("Latency table file, or a tabular latency model: hwnasbench:<device> | help:<device> "
                            "(nb201 only); default: build or reuse runs/luts/<space>_r<res>_c<classes>_<backend>_"
                            "t<threads>_<host>.json on this machine.", flag="--lut")
    dataset: str = setting("digits | synthetic[:N] | cifar10:PATH | imagefolder:PATH | "
                           "nb201:cifar10|cifar100|imagenet16[:12ep] (answered from the NB201 table).", "digits")
    resolution: int = setting("Input resolution.", 32, min=8)
    num_classes: int | None = None  # None: the dataset's; no flag, the dataset decides
    space_options: dict[str, Any] = setting("JSON keyword arguments of the space, e.g. '{\"ops\": [\"mbconv\"]}'.",
                                            default_factory=dict)
    # the default: what beat random search and the scaled zoo at equal wall time (BENCHMARKS.md)
    strategy: str = setting("`nas strategies` lists them: band-screen (the default), random, evolution, mnas-rl, "
                            "tpe, nsga2, local, bananas, proxy-warm, successive-halving; proxyless, once-for-all "
                            "(one-shot).", "band-screen")
    strategy_options: dict[str, Any] = setting(
        "JSON keyword arguments of the strategy, e.g. '{\"epochs\": 20, \"derive\": \"target\"}' "
        "(proxyless: ProxylessConfig fields).", default_factory=dict)
    seed: int = setting("Seed of the searcher, data split and training.", 0)
    trials: int = setting("Trials to finish.", 60, min=1)
    time_limit: float | None = setting("Seconds: stop starting trials this long into this invocation's search "
                                       "(the running trial finishes; --trials stays the cap).", None, execution=True)
    constraint: str = setting("hard (over budget: never trained) | soft (MnasNet's penalty).", "hard")
    train: TrainConfig = field(default_factory=TrainConfig)  # its fields with metadata are options
    train_limit: int | None = setting("Use at most this many training images per trial (stratified).", None, min=1)
    ray: bool = setting("Run trials on an embedded local Ray.", False, execution=True)
    ray_address: str | None = setting("Run trials on the Ray cluster at ADDR ('auto' allowed).", None, execution=True)
    workers: int = setting("Trials in parallel (Ray).", 1, execution=True, min=1)
    cpus_per_trial: float = setting("CPUs per Ray trial (fractions share a CPU).", 1.0, execution=True, min=0.01)
    asha: bool = setting("Stop weak trials early (Ray ASHA).", False)
    max_failures: int = setting("Retries of a Ray trial whose worker died.", 2, execution=True, min=0)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> OptionError:
            return OptionError(f"SearchConfig.{name}={getattr(self, name)!r}: expected {expected}")

        for name in ("space", "dataset", "strategy", "lut_path"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        budget = self.latency_budget_ms
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (math.isfinite(budget) and budget > 0):
            raise bad("latency_budget_ms", "a finite number of milliseconds > 0")
        for item in fields(self):  # the int bounds `nas search` gives click, for every caller
            low, value = item.metadata.get("min"), getattr(self, item.name)
            if is_int(low) and not ((value is None and item.default is None) or (is_int(value) and value >= low)):
                raise bad(item.name, f"{'None or ' if item.default is None else ''}an int >= {low}")
        if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 2):
            raise bad("num_classes", "None (the dataset's) or an int >= 2")
        for name in ("space_options", "strategy_options"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "a JSON object of keyword arguments")
        if not is_int(self.seed):
            raise bad("seed", "an int")
        limit = self.time_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not (math.isfinite(limit) and limit > 0)):
            raise bad("time_limit", "None or a finite number of seconds > 0")
        if limit is not None and self.uses_ray:
            raise bad("time_limit", "None on Ray (the time limit is the local runner's)")
        if self.constraint not in CONSTRAINTS:
            raise bad("constraint", f"one of {list(CONSTRAINTS)}")
        if not isinstance(self.train, TrainConfig):
            raise bad("train", "a TrainConfig")
        if isinstance(self.cpus_per_trial, bool) or not isinstance(self.cpus_per_trial, (int, float)) \
                or not self.cpus_per_trial > 0:
            raise bad("cpus_per_trial", "a number > 0 (fractions share a CPU)")
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
        """This (stored) config with the execution settings (Ray, workers, ...) a user passed on
        resume (None: not passed). A search setting is refused even when it equals the stored one."""
        known = {item.name for item in fields(self)} | {f"train.{item.name}" for item in fields(TrainConfig)}
        if unknown := sorted(set(given) - known):
            raise OptionError(f"unknown SearchConfig field(s) {unknown}")
        given = {name: value for name, value in given.items() if value is not None}
        refuse_on_resume([name for name in given if name not in EXECUTION_FIELDS])
        return replace(self, **given)


# "trials", "train.epochs", ...: the fields `nas search` offers as options
SETTINGS: dict[str, Field] = {prefix + item.name: item for prefix, cls in (("", SearchConfig), ("train.", TrainConfig))
                              for item in fields(cls) if "help" in item.metadata}
EXECUTION_FIELDS = tuple(name for name, item in SETTINGS.items() if item.metadata.get("execution"))


def flag_of(name: str) -> str:
    return SETTINGS[name].metadata.get("flag") or "--" + name.rpartition(".")[2].replace("_", "-")


def refuse_on_resume(names: list[str]) -> None:
    """A resumed run keeps what it searches: its trials so far were run under config.json."""
    if names:
        raise OptionError(f"{', '.join(names)}: not allowed with --resume: the run resumes with its config.json "
                          "(start a new run to change them)")
