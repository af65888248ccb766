"""A read-only view of a run directory for `nas export` and `nas report`.

The runner owns the run directory and writes it (`nas.rundir.files.RunDirectory`); this module only
reads it, and tolerates a run that is still going: trials.jsonl may end in a torn line (skipped by
`RunDirectory.read_trials`), best/ and searcher.json may not exist yet. Trial records are read
defensively (`trial_*` accessors) because only a few fields are guaranteed: ``trial_id``,
``candidate.arch`` and ``result.status``; everything else may be missing or null.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces.errors import InputFileError, UnknownNameError
from nas.rundir.files import RunDirectory
from search_spaces.spec import ArchSpec, SpecError

logger = logging.getLogger(__name__)

__all__ = [
    "RunInfo", "config_value", "read_run", "trial_accuracy", "trial_arch", "trial_feasible", "trial_latency",
    "trial_result", "trial_status",
]

# Config keys by meaning, in order of preference; looked up at any depth of config.json, so the
# runner may nest them (e.g. {"objective": {"latency_budget_ms": 6}}) without breaking readers.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "lut": ("lut", "lut_path", "table", "table_path", "latency_table"),
    "budget_ms": ("latency_budget_ms", "budget_ms", "latency_budget"),
    "strategy": ("strategy", "searcher"),
    "trials": ("trials", "n_trials", "max_trials", "num_trials"),
    "dataset": ("dataset", "data"),
    "space": ("space", "search_space"),
    "constraint": ("constraint",),
    "seed": ("seed",),
}


def config_value(config: dict[str, Any], meaning: str) -> Any:
    """The first non-empty scalar under any of `CONFIG_KEYS[meaning]`, breadth first; None if absent."""
    names = CONFIG_KEYS[meaning]
    queue: list[Any] = [config]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            for name in names:
                value = node.get(name)
                if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
                    return value
            queue.extend(value for value in node.values() if isinstance(value, (dict, list)))
        elif isinstance(node, list):
            queue.extend(value for value in node if isinstance(value, (dict, list)))
    return None


def trial_result(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result")
    return result if isinstance(result, dict) else record


def trial_status(record: dict[str, Any]) -> str:
    return str(trial_result(record).get("status", "ok"))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def trial_accuracy(record: dict[str, Any]) -> float | None:
    return _finite(trial_result(record).get("accuracy"))


def trial_latency(record: dict[str, Any]) -> float | None:
    """The table-predicted latency (what the search optimised); None when unknown."""
    return _finite(trial_result(record).get("latency_ms"))


def trial_feasible(record: dict[str, Any], budget_ms: float | None) -> bool:
    """The runner's verdict when recorded, else: ok, with an accuracy, within the budget."""
    if isinstance(record.get("feasible"), bool):
        return record["feasible"]
    latency = trial_latency(record)
    within = budget_ms is None or (latency is not None and latency <= budget_ms)
    return trial_status(record) == "ok" and trial_accuracy(record) is not None and within


def trial_arch(record: dict[str, Any]) -> ArchSpec | None:
    candidate = record.get("candidate")
    data = candidate.get("arch") if isinstance(candidate, dict) else record.get("arch")
    if not isinstance(data, dict):
        return None
    try:
        return ArchSpec.from_dict(data)
    except SpecError as error:
        logger.warning("trial %s: unreadable architecture (%s)", record.get("trial_id"), error)
        return None


@dataclass
class RunInfo:
    """Everything `export` and `report` read from a run, loaded once."""

    path: Path
    config: dict[str, Any]
    trials: list[dict[str, Any]]
    best_arch: ArchSpec | None = None
    best_metrics: dict[str, Any] | None = None
    searcher: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # what was missing or unreadable, for the reader

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def rundir(self) -> RunDirectory:
        return RunDirectory(self.path)

    def value(self, meaning: str) -> Any:
        return config_value(self.config, meaning)

    @property
    def budget_ms(self) -> float | None:
        return _finite(self.value("budget_ms"))

    @property
    def best_trial_id(self) -> int | None:
        metrics = self.best_metrics or {}
        for key in ("trial_id", "trial"):
            if isinstance(metrics.get(key), int) and not isinstance(metrics.get(key), bool):
                return int(metrics[key])
        return None

    def trial(self, trial_id: int) -> dict[str, Any]:
        for record in self.trials:
            if record.get("trial_id") == trial_id:
                return record
        known = sorted(r["trial_id"] for r in self.trials if isinstance(r.get("trial_id"), int))
        shown = f"{known[0]}..{known[-1]}" if known else "none yet"
        raise UnknownNameError(f"{self.path}: no finished trial with id {trial_id} in trials.jsonl (ids: {shown})")

    def count(self, statuses: Iterable[str]) -> int:
        wanted = set(statuses)
        return sum(trial_status(record) in wanted for record in self.trials)

    def lut_path(self) -> Path | None:
        """config.json's latency table path: as written (absolute or relative to the working
        directory the run was started from), else relative to the run directory."""
        value = self.value("lut")
        if not isinstance(value, str):
            return None
        for candidate in (Path(value), self.path / value, self.path.parent / value):
            if candidate.is_file():
                return candidate
        self.notes.append(f"latency table {value!r} from config.json was not found")
        return None

    def best_or_leader(self) -> tuple[ArchSpec | None, str]:
        """best/arch.json, or (for a run without best/ yet) the most accurate feasible trial."""
        if self.best_arch is not None:
            return self.best_arch, "best/arch.json"
        feasible = [r for r in self.trials if trial_feasible(r, self.budget_ms) and trial_accuracy(r) is not None]
        if not feasible:
            return None, "no feasible trial yet"
        leader = max(feasible, key=lambda r: trial_accuracy(r) or 0.0)
        return trial_arch(leader), f"trial {leader.get('trial_id')} (best feasible so far; best/ not written yet)"


def read_run(path: str | os.PathLike) -> RunInfo:
    """Read a run directory, finished or in progress. Raises FileNotFoundError when `path` has no
    config.json (not a run) and ValueError for a corrupt file other than a torn last trial line."""
    rundir = RunDirectory(path)
    if not rundir.path.is_dir():
        raise InputFileError(f"run directory {rundir.path} does not exist; pass runs/<name> of a search")
    config = rundir.read_config()
    info = RunInfo(rundir.path, config, rundir.read_trials())
    if (rundir.best_dir / "arch.json").is_file():
        info.best_arch = rundir.read_best_arch()
        info.best_metrics = rundir.read_best_metrics()
        if info.best_metrics is None:
            info.notes.append("best/metrics.json is missing (best/ is being rewritten, or the run stopped there)")
    else:
        info.notes.append("best/ does not exist yet (no feasible trial has finished, or the runner has not saved it yet)")
    try:
        info.searcher = rundir.read_searcher_state()
    except ValueError as error:  # a report must not die on the searcher's file
        info.notes.append(f"searcher.json unreadable: {error}")
    return info
