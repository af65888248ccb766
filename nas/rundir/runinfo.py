"""A read-only view of a run directory for `nas export` and `nas report`.

The runner owns the run directory and writes it (`nas.rundir.files.RunDirectory`); this module only
reads it, and tolerates a run that is still going: trials.jsonl may end in a torn line (skipped by
`RunDirectory.read_trials`), best/ and searcher.json may not exist yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.rundir.files import RunDirectory
from nas.rundir.records import BestMetrics, TrialRecord
from search_spaces.errors import InputFileError, UnknownNameError
from search_spaces.spec import ArchSpec

__all__ = ["RunInfo", "read_run"]


def _setting(config: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    # a hand-written or foreign config.json may lack a SearchConfig field: the reader says "not recorded"
    value = config.get(name)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


@dataclass
class RunInfo:
    """Everything `export` and `report` read from a run, loaded once."""

    path: Path
    config: dict[str, Any]  # config.json: a `SearchConfig`'s fields
    trials: list[TrialRecord]
    best_arch: ArchSpec | None = None
    best_metrics: BestMetrics | None = None
    searcher: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # what was missing or unreadable, for the reader

    def __post_init__(self) -> None:
        self.space: str | None = _setting(self.config, "space", str)
        self.strategy: str | None = _setting(self.config, "strategy", str)
        self.dataset: str | None = _setting(self.config, "dataset", str)
        self.constraint: str | None = _setting(self.config, "constraint", str)
        self.lut: str | None = _setting(self.config, "lut_path", str)
        self.planned_trials: int | None = _setting(self.config, "trials", int)
        self.budget_ms: float | None = _setting(self.config, "latency_budget_ms", (int, float))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def rundir(self) -> RunDirectory:
        return RunDirectory(self.path)

    def trial(self, trial_id: int) -> TrialRecord:
        for record in self.trials:
            if record.trial_id == trial_id:
                return record
        known = sorted(r.trial_id for r in self.trials)
        shown = f"{known[0]}..{known[-1]}" if known else "none yet"
        raise UnknownNameError(f"{self.path}: no finished trial with id {trial_id} in trials.jsonl (ids: {shown})")

    def count(self, statuses: Iterable[str]) -> int:
        wanted = set(statuses)
        return sum(record.result.status in wanted for record in self.trials)

    def lut_path(self) -> Path | None:
        """config.json's latency table path: as written (absolute or relative to the working
        directory the run was started from), else relative to the run directory."""
        if self.lut is None:
            return None
        from predictors.latency import is_named_model

        if is_named_model(self.lut):
            self.notes.append(f"latency from the whole-network model {self.lut!r}: no per-layer table")
            return None
        for candidate in (Path(self.lut), self.path / self.lut, self.path.parent / self.lut):
            if candidate.is_file():
                return candidate
        self.notes.append(f"latency table {self.lut!r} from config.json was not found")
        return None

    def best_or_leader(self) -> tuple[ArchSpec | None, str]:
        """best/arch.json, or (for a run without best/ yet) the most accurate feasible trial."""
        if self.best_arch is not None:
            return self.best_arch, "best/arch.json"
        feasible = [r for r in self.trials if r.feasible and r.result.accuracy is not None]
        if not feasible:
            return None, "no feasible trial yet"
        leader = max(feasible, key=lambda r: r.result.accuracy)
        return leader.arch, f"trial {leader.trial_id} (best feasible so far; best/ not written yet)"


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
