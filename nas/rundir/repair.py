"""`repair_run`: make a run's files agree again from what they prove, so that `nas search
--resume RUN --repair` can go on where resume alone refuses (`SearchSession._check_agreement`).

A finished trial is written in the order trials.jsonl -> searcher.json -> best/, so when
trials.jsonl lost lines (deleted, cut short, a torn or corrupt line, two writers before the run
lock), the later files are evidence for them:

- best/metrics.json with best/arch.json prove one whole trial (architecture, accuracy, latency,
  cost, reward): its line is rebuilt, marked `result.extra["rebuilt_from"]`.
- searcher.json's `told_trial_ids` prove which other trials finished, but not their results (a
  strategy's state keeps at most an architecture and a reward): they cannot be rebuilt. They are
  named as lost and dropped from `told_trial_ids`; the strategy's state, which learned from them,
  is kept as it is, so their ids are never handed out again and the resumed run trains new
  trials in their place until the planned number of trials is recorded.
- a corrupt line is dropped; of two lines with one trial id, the one best/ holds (else the first)
  is kept.

Nothing finished is deleted: every file changed is first copied to `<name>.before-repair`, best/
is never written, and a best/ that proves no trial (metrics.json missing or unreadable, or an
architecture other than the one metrics.json names) is moved to best.before-repair, since the
resume would otherwise retrain over it. The caller holds the run's writer lock.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.rundir.atomic import write_atomically, write_json_atomic
from nas.rundir.files import RunDirectory
from nas.rundir.records import BestMetrics, RunDirError, TrialRecord
from nas.strategies.base import Candidate, Result
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec

__all__ = ["BACKUP_SUFFIX", "LostTrial", "RepairReport", "repair_run"]

BACKUP_SUFFIX = ".before-repair"


@dataclass(frozen=True)
class LostTrial:
    """A trial searcher.json records as finished whose trials.jsonl line is gone."""

    trial_id: int
    known: str  # what searcher.json still says about it, e.g. "its architecture and reward 0.5"


@dataclass(frozen=True)
class RepairReport:
    run: Path
    kept: tuple[int, ...]  # trials.jsonl lines kept as they were
    rebuilt: tuple[int, ...]  # lines rebuilt from best/
    lost: tuple[LostTrial, ...]
    dropped: tuple[str, ...]  # lines dropped, each with its line number and why
    rewritten: tuple[str, ...]  # the run files written anew
    backups: tuple[Path, ...]  # copies of the files as they were
    best_trial: int | None  # the trial best/ holds (None: no best/, or it was moved aside)
    best_moved: str | None = None  # where best/ went (best.before-repair) and why
    planned: int | None = None  # config.json's trials
    trials_missing: bool = False  # there was no trials.jsonl at all
    next_trial_id: int | None = None  # the first id the resumed run can hand out

    @property
    def changed(self) -> bool:
        return bool(self.rewritten or self.best_moved)

    @property
    def recorded(self) -> int:
        return len(self.kept) + len(self.rebuilt)

    def lines(self) -> list[str]:
        """What was rebuilt, what could not be, and how the resumed run continues."""
        if not self.changed:
            return [f"{self.run}: the run files agree ({self.recorded} trials recorded); nothing to repair"]
        out = [f"{self.run}: repaired; the files as they were are kept as *{BACKUP_SUFFIX}"]
        out += [f"  kept {len(self.kept)} trial line(s) of trials.jsonl as they were{_ids(self.kept)}"
                if self.kept or not self.trials_missing else "  trials.jsonl was missing"]
        out += [f"  rebuilt trial {trial_id}'s line from best/metrics.json and best/arch.json"
                for trial_id in self.rebuilt]
        out += [f"  dropped trials.jsonl {reason}" for reason in self.dropped]
        out += [f"  not rebuilt: trial {lost.trial_id} finished (searcher.json says so) but its result is lost; "
                f"searcher.json keeps only {lost.known}" for lost in self.lost]
        if self.best_moved:
            again = "; the resume saves the best recorded trial there anew (retrained with its seed)" \
                if self.recorded else ""
            out.append(f"  best/ moved {self.best_moved}{again}")
        elif self.best_trial is not None:
            out.append(f"  best/ (trial {self.best_trial}) is untouched")
        if self.planned is not None:
            more = max(0, self.planned - self.recorded)
            ids = f", ids from {self.next_trial_id} on" if more and self.next_trial_id is not None else ""
            lost = " (lost trials' ids are not reused)" if self.lost else ""
            out.append(f"  trials.jsonl now records {self.recorded} of the {self.planned} planned trials: the "
                       f"resumed run trains {more} more{ids}{lost}")
        return out


class _Line:
    """One trials.jsonl line that parsed: its bytes (kept as written) and its record."""

    def __init__(self, number: int, raw: bytes, record: TrialRecord) -> None:
        self.number, self.raw, self.record = number, raw, record


def repair_run(directory: RunDirectory, *, planned: int | None = None) -> RepairReport:
    """Rebuild `directory`'s trials.jsonl (and searcher.json's told ids) from what best/ and
    searcher.json prove; a run whose files agree is left as it is. `planned`: the run's trials."""
    trials_missing = not directory.trials_path.is_file()
    lines, dropped = _read_lines(directory)
    try:
        saved = directory.read_searcher_state()
    except RunDirError as error:
        raise RunDirError(f"{error}; --repair cannot read it either: move it aside to resume with a fresh "
                          "strategy state (finished trials are kept)") from None
    told = _told_ids(saved, directory)
    best, best_moved = _provable_best(directory)
    best_id = None if best is None else best[0].trial_id
    lines, duplicates = _one_line_per_trial(lines, best[0] if best else None)
    dropped += duplicates
    recorded = {line.record.trial_id for line in lines}
    records: list[bytes] = [line.raw for line in lines]
    rebuilt: tuple[int, ...] = ()
    if best is not None and best_id not in recorded:
        record = _rebuilt_record(directory, *best)
        records.insert(_place(lines, record), (record.to_line() + "\n").encode())
        rebuilt = (best_id,)
    known = recorded | set(rebuilt)
    lost = tuple(LostTrial(i, _what_state_keeps(saved, i)) for i in sorted(told - known))
    new_told = sorted(told & known)
    backups, rewritten = [], []
    if dropped or rebuilt:
        if directory.trials_path.is_file():
            backups.append(_backup(directory.trials_path))
        write_atomically(directory.trials_path, b"".join(records))
        rewritten.append(directory.TRIALS)
    if saved is not None and new_told != sorted(told):
        backups.append(_backup(directory.searcher_path))
        write_json_atomic(directory.searcher_path, {**saved, "told_trial_ids": new_told})
        rewritten.append(directory.SEARCHER)
    if best_moved:
        target = _free_name(directory.best_dir)
        directory.best_dir.rename(target)
        best_moved = f"to {target.name}: {best_moved}"
    state = (saved or {}).get("state")
    state_next = state.get("next_trial_id") if isinstance(state, dict) else None
    next_id = max(known | told, default=-1) + 1
    report = RepairReport(directory.path, tuple(line.record.trial_id for line in lines), rebuilt, lost,
                          tuple(dropped), tuple(rewritten), tuple(backups), None if best_moved else best_id,
                          best_moved=best_moved, planned=planned, trials_missing=trials_missing,
                          next_trial_id=max(next_id, state_next) if type(state_next) is int else next_id)
    return report


# -- reading what the files prove ---------------------------------------------------------------------

def _read_lines(directory: RunDirectory) -> tuple[list[_Line], list[str]]:
    """The lines that parse as trial records, and why each other line is dropped."""
    if not directory.trials_path.is_file():
        return [], []
    raw = directory.trials_path.read_bytes()
    pieces = raw.split(b"\n")
    lines, dropped = [], []
    for number, piece in enumerate(pieces, start=1):
        if not piece.strip():
            continue
        if number == len(pieces):  # no newline after it: the append never finished
            dropped.append(f"line {number}: unterminated ({len(piece)} bytes; killed while appending)")
            continue
        try:
            data = json.loads(piece)
        except (ValueError, UnicodeDecodeError) as error:
            dropped.append(f"line {number}: not JSON ({error})")
            continue
        try:
            if not isinstance(data, dict):
                raise RunDirError(f"line {number}: a JSON {type(data).__name__}, not a trial record")
            record = TrialRecord.from_json(data, f"line {number}")
        except UserError as error:
            dropped.append(str(error))
            continue
        lines.append(_Line(number, piece + b"\n", record))
    return lines, dropped


def _told_ids(saved: dict[str, Any] | None, directory: RunDirectory) -> set[int]:
    if saved is None:
        return set()
    told = saved.get("told_trial_ids", [])
    if not isinstance(told, list) or not all(type(i) is int for i in told):
        raise RunDirError(f"{directory.searcher_path}: 'told_trial_ids' must be a list of ints; move the file aside "
                          "to resume with a fresh strategy state (finished trials are kept)")
    return set(told)


def _provable_best(directory: RunDirectory) -> tuple[tuple[BestMetrics, ArchSpec] | None, str | None]:
    """best/'s metrics and architecture when they prove a trial; else why best/ must be moved aside."""
    if not directory.best_dir.exists():
        return None, None
    try:
        metrics = directory.read_best_metrics()
        if metrics is None:
            return None, "it has no metrics.json (the run stopped while saving it), so its trial is unknown"
        arch = directory.read_best_arch()
    except UserError as error:
        return None, f"it proves no trial ({error})"
    if arch.content_hash() != metrics.arch_hash:
        return None, (f"arch.json hashes to {arch.content_hash()}, metrics.json names trial {metrics.trial_id} "
                      f"with {metrics.arch_hash}")
    return (metrics, arch), None


def _one_line_per_trial(lines: list[_Line], best: BestMetrics | None) -> tuple[list[_Line], list[str]]:
    """Of the lines sharing a trial id (two writers before the run lock), keep the one best/
    holds, else the first."""
    chosen: dict[int, _Line] = {}
    for line in lines:
        trial_id = line.record.trial_id
        if trial_id not in chosen:
            chosen[trial_id] = line
        elif (best is not None and best.trial_id == trial_id and line.record.arch_hash == best.arch_hash
              and chosen[trial_id].record.arch_hash != best.arch_hash):
            chosen[trial_id] = line
    kept = [line for line in lines if chosen[line.record.trial_id] is line]
    dropped = [f"line {line.number}: trial {line.record.trial_id} again (kept line "
               f"{chosen[line.record.trial_id].number})" for line in lines if chosen[line.record.trial_id] is not line]
    return kept, dropped


def _what_state_keeps(saved: dict[str, Any] | None, trial_id: int) -> str:
    """What the strategy's state says of `trial_id` (evolution keeps its population's
    architectures and rewards; most strategies keep nothing per trial)."""
    for item in _dicts((saved or {}).get("state")):
        if item.get("trial_id") == trial_id and type(item.get("trial_id")) is int:
            parts = ["its architecture"] if "arch" in item else []
            reward = item.get("reward")
            if isinstance(reward, (int, float)) and not isinstance(reward, bool):
                parts.append(f"reward {reward:.4g}")
            if parts:
                return " and ".join(parts) + " (not its accuracy or latency)"
    return "its id"


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item)


# -- rebuilding ----------------------------------------------------------------------------------------

def _rebuilt_record(directory: RunDirectory, metrics: BestMetrics, arch: ArchSpec) -> TrialRecord:
    """The trial best/ holds, as the line trials.jsonl lost. After the final retrain,
    metrics.json's measured latency is the retrained network's, not the trial's: left out."""
    measured = metrics.measured_latency_ms if metrics.weights_from in ("trial", "retrained") else None
    result = Result("ok", metrics.val_accuracy, metrics.latency_ms, measured, metrics.macs, metrics.params,
                    metrics.train_time_s, metrics.epochs,
                    extra={"rebuilt_from": f"{directory.BEST}/metrics.json"})
    budget = metrics.latency_budget_ms
    feasible = result.ok and None not in (result.latency_ms, budget) and result.latency_ms <= budget
    candidate = Candidate(metrics.trial_id, arch, info={"rebuilt_from": f"{directory.BEST}/"})
    return TrialRecord(candidate, result, metrics.reward or 0.0, feasible, metrics.updated_at, "local")


def _place(lines: list[_Line], record: TrialRecord) -> int:
    """Where the rebuilt best trial goes: before the first line that scores at least as well.
    best/ held it, so it came before any such trial (ties keep the earlier one); placed after
    one, the resume would take that trial for the best and retrain it over best/."""
    accuracy = record.result.accuracy
    for index, line in enumerate(lines):
        other = line.record.result.accuracy
        if accuracy is not None and line.record.feasible and other is not None and other >= accuracy:
            return index
    return len(lines)


def _free_name(path: Path) -> Path:
    """`path` + .before-repair, or .before-repair.2, ... when an earlier repair kept one."""
    candidate, number = path.with_name(path.name + BACKUP_SUFFIX), 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}{BACKUP_SUFFIX}.{number}")
    return candidate


def _backup(path: Path) -> Path:
    target = _free_name(path)
    shutil.copy2(path, target)
    return target


def _ids(ids: tuple[int, ...]) -> str:
    if not 0 < len(ids) <= 20:
        return ""
    return f" (trial{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))})"

