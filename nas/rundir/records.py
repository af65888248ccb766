"""Typed records of a run directory, so that writers and readers spell each key in one place: a
trials.jsonl line (`TrialRecord`) and best/metrics.json (`BestMetrics`). Each file carries a
``schema_version``: one from another hwnas is refused by name instead of misread, one from before
the stamp reads as version 1. BestMetrics 2 moved what only some runs add (proxyless's search
figures, the demo's settings) from version 1's top level into ``extra``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from nas.rundir.atomic import json_safe, now_iso
from nas.strategies.base import Candidate, Result
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec

__all__ = ["SCHEMA_KEY", "BestMetrics", "RunDirError", "TrialRecord", "check_version"]

SCHEMA_KEY = "schema_version"
WEIGHTS_FILE = "weights.safetensors"


class RunDirError(UserError, ValueError):
    """A run directory is missing, corrupt, of another schema version, or already in use."""


def check_version(data: dict[str, Any], current: int, where: str) -> int:
    version, readable = data.get(SCHEMA_KEY, 1), range(1, current + 1)  # no stamp: written before it existed
    if isinstance(version, bool) or version not in readable:
        raise RunDirError(f"{where}: {SCHEMA_KEY}={version!r} not in {{{', '.join(map(str, readable))}}}; "
                          "written by another version of hwnas")
    return version


@dataclass(frozen=True)
class TrialRecord:
    """One line of trials.jsonl, the same whichever way the trial ran."""

    SCHEMA_VERSION: ClassVar[int] = 1

    candidate: Candidate
    result: Result
    reward: float
    feasible: bool
    finished_at: str | None = None
    executor: str = "local"  # local | ray (a worker) | ray-driver (rejected before training)
    executor_trial_id: str | None = None  # Ray Tune's trial id

    @property
    def trial_id(self) -> int:
        return self.candidate.trial_id

    @property
    def arch(self) -> ArchSpec:
        return self.candidate.arch

    @property
    def arch_hash(self) -> str:
        return self.candidate.arch.content_hash()

    def to_json(self) -> dict[str, Any]:
        # arch_hash and blocks repeat the candidate so that `grep`/`jq` users see them at once
        return {SCHEMA_KEY: self.SCHEMA_VERSION, "trial_id": self.trial_id, "candidate": self.candidate.to_dict(),
                "arch_hash": self.arch_hash, "blocks": self.arch.block_strings(), "result": self.result.to_dict(),
                "reward": self.reward, "feasible": self.feasible, "finished_at": self.finished_at,
                "executor": self.executor, "executor_trial_id": self.executor_trial_id}

    def to_line(self) -> str:
        """The record as its one line of trials.jsonl (strict JSON, no newline)."""
        line = json.dumps(json_safe(self.to_json()), allow_nan=False, separators=(",", ":"))
        if "\n" in line:
            raise ValueError("a trial record must serialise to one line")
        return line

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "trials.jsonl") -> TrialRecord:
        check_version(data, cls.SCHEMA_VERSION, where)
        try:
            return cls(Candidate.from_dict(data["candidate"]), Result.from_dict(data["result"]),
                       float(data["reward"]), bool(data["feasible"]), data.get("finished_at"),
                       data.get("executor", "local"), data.get("executor_trial_id"))
        except (KeyError, TypeError, ValueError) as error:
            raise RunDirError(f"{where}: corrupt trial record ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class BestMetrics:
    """best/metrics.json: the best trial's figures and the budget it met, where best/'s weights
    came from, and the final retrain's figures once `nas.search.runner.finalize_best` ran."""

    SCHEMA_VERSION: ClassVar[int] = 2

    trial_id: int
    arch_hash: str
    blocks: tuple[str, ...]
    val_accuracy: float | None = None
    latency_ms: float | None = None  # predicted by the latency table
    measured_latency_ms: float | None = None  # the trial's, replaced by the final retrain's
    params: int | None = None
    macs: int | None = None
    reward: float | None = None
    epochs: int | None = None
    train_time_s: float | None = None
    latency_budget_ms: float | None = None
    weights: str | None = None  # file name in best/; None: best/ holds the architecture only
    weights_from: str | None = None  # trial | retrained (with the trial's seed) | final
    updated_at: str | None = None
    final_epochs: int | None = None
    final_val_accuracy: float | None = None
    test_accuracy: float | None = None
    final_train_time_s: float | None = None
    predicted_latency_ms: float | None = None
    measured_latency_p10_ms: float | None = None
    measured_latency_p90_ms: float | None = None
    measured_with: dict[str, Any] | None = None  # backend, threads, device
    measured_other_load_cores: float | None = None  # CPU other processes used meanwhile (None: unknown/remote)
    extra: dict[str, Any] = field(default_factory=dict)  # what one strategy or command adds

    @classmethod
    def from_trial(cls, record: TrialRecord, latency_budget_ms: float, *, weights_from: str | None = "trial",
                   extra: dict[str, Any] | None = None) -> BestMetrics:
        """The metrics of best/ holding `record`; weights_from=None when its weights are missing."""
        result = record.result
        return cls(record.trial_id, record.arch_hash, tuple(record.arch.block_strings()), result.accuracy,
                   result.latency_ms, result.measured_latency_ms, result.params, result.macs, record.reward,
                   result.epochs, result.train_time_s, latency_budget_ms, WEIGHTS_FILE if weights_from else None,
                   weights_from, now_iso(), extra=dict(extra or {}))

    def finalized(self, retrain: dict[str, Any]) -> BestMetrics:
        """With the figures of `nas.search.trial.retrain` (its keys are field names) and its weights."""
        return replace(self, **retrain, weights=WEIGHTS_FILE, weights_from="final", updated_at=now_iso())

    def to_json(self) -> dict[str, Any]:
        return {SCHEMA_KEY: self.SCHEMA_VERSION, **asdict(self), "blocks": list(self.blocks)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "best/metrics.json") -> BestMetrics:
        version = check_version(data, cls.SCHEMA_VERSION, where)
        values = {key: value for key, value in data.items() if key != SCHEMA_KEY}
        if version == 1:
            known = {item.name for item in fields(cls)}
            values = {key: value for key, value in values.items() if key in known} | {
                "extra": {key: value for key, value in values.items() if key not in known}}
        try:
            return cls(**{**values, "blocks": tuple(values["blocks"])})
        except (KeyError, TypeError, ValueError) as error:
            raise RunDirError(f"{where}: corrupt best metrics ({type(error).__name__}: {error})") from None
