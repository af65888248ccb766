"""`RunDirectory`: the files of one search run, written so that a kill at any moment loses no
finished trial.

Layout (``runs/<name>/``)::

    config.json      everything needed to reproduce or resume (a `SearchConfig` as JSON)
    trials.jsonl     one `TrialRecord` per finished trial, appended, flushed and fsync'ed
    searcher.json    {format, schema_version, strategy, told_trial_ids, state, saved_at}, replaced atomically
    best/            arch.json, weights.safetensors, metrics.json (`BestMetrics`) of the best feasible trial
    study.db         Optuna storage, for the Optuna strategies (optuna-dashboard reads it)
    ray_results/     Ray Tune's own files, for runs on Ray

Durability rules: whole-file writes go to a temporary file in the same directory that is
fsync'ed and then `os.replace`d over the target (readers see the old or the new file, never
half of one); trials.jsonl is append-only and a line is only "finished" once its newline is on
disk. A SIGKILL in the middle of an append leaves a torn last line: readers skip it with a
warning and `repair_trials` cuts it off before the next append, so it cannot glue itself to the
next record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nas.rundir.atomic import json_safe, now_iso, write_atomically, write_json_atomic
from nas.rundir.model_files import WeightsError, read_header, verify_digests, weights_payload
from nas.rundir.records import SCHEMA_KEY, BestMetrics, RunDirError, TrialRecord, check_version
from search_spaces.errors import InputFileError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

__all__ = ["RunDirError", "RunDirectory", "json_safe", "run_directory", "load_weights", "now_iso", "save_weights", "write_atomically", "write_json_atomic"]

SEARCHER_FORMAT = "hwnas-searcher-state"
DEMO_MARKER = ".hwnas-demo-run"
LOCK_FILE = ".lock"
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# config.json and searcher.json hold others' data (SearchConfig, a strategy's state) in this envelope
CONFIG_VERSION = SEARCHER_VERSION = 1


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: corrupt {what} (not valid JSON: {error})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: corrupt {what} (expected a JSON object, got {type(data).__name__})")
    return data


class RunDirectory:
    """The files of one run. Creating the object touches nothing on disk."""

    CONFIG = "config.json"
    TRIALS = "trials.jsonl"
    SEARCHER = "searcher.json"
    BEST = "best"
    STUDY = "study.db"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_path, self.trials_path = self.path / self.CONFIG, self.path / self.TRIALS
        self.searcher_path, self.study_path = self.path / self.SEARCHER, self.path / self.STUDY
        self.best_dir = self.path / self.BEST
        self.best_weights_path = self.best_dir / "weights.safetensors"
        self.ray_results = self.path / "ray_results"

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def optuna_storage(self) -> str:
        """SQLAlchemy URL of the Optuna study: absolute, so it works from any working directory."""
        return f"sqlite:///{self.study_path.resolve()}"

    # -- config ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config_path, {SCHEMA_KEY: CONFIG_VERSION, **config})

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise InputFileError(f"{self.path} is not a search run: {self.CONFIG} is missing")
        data = read_json_object(self.config_path, "run config")
        check_version(data, CONFIG_VERSION, str(self.config_path))
        data.pop(SCHEMA_KEY, None)
        return data

    # -- trials ------------------------------------------------------------------------------------
    def append_trial(self, record: TrialRecord) -> None:
        """One line, durable before returning: the trial counts as finished from then on."""
        line = record.to_line()
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.trials_path, "a", encoding="utf-8") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())

    def read_trials(self) -> list[TrialRecord]:
        """Every finished trial, in file order. A torn last line (killed mid-append) is skipped
        with a warning; a corrupt line anywhere else is an error naming its line number."""
        if not self.trials_path.is_file():
            return []
        raw = self.trials_path.read_bytes()
        lines = raw.split(b"\n")
        records: list[TrialRecord] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            is_last = number == len(lines)  # text after the final newline: never completed
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "trial_id" not in record:
                    raise ValueError("not a trial record")
            except (ValueError, UnicodeDecodeError) as error:
                if is_last:
                    logger.warning("%s: ignoring a torn last line (%d bytes; the run was killed while "
                                   "appending it)", self.trials_path, len(line))
                    continue
                raise RunDirError(f"{self.trials_path}:{number}: corrupt trial record ({error}); `nas search --resume "
                                  f"{self.path} --repair` drops it (keeping trials.jsonl.before-repair)") from None
            if is_last:
                # complete JSON but no newline: the fsync did not finish, so it never counted
                logger.warning("%s: ignoring an unterminated last line", self.trials_path)
                continue
            records.append(TrialRecord.from_json(record, f"{self.trials_path}:{number}"))
        return records

    def repair_trials(self) -> int:
        """Cut a torn tail off trials.jsonl (kept in trials.jsonl.torn); returns bytes removed."""
        if not self.trials_path.is_file():
            return 0
        raw = self.trials_path.read_bytes()
        if not raw or raw.endswith(b"\n"):
            return 0
        keep = raw.rfind(b"\n") + 1
        torn = raw[keep:]
        with open(self.path / (self.TRIALS + ".torn"), "ab") as file:
            file.write(torn + b"\n")
        with open(self.trials_path, "r+b") as file:
            file.truncate(keep)
            file.flush()
            os.fsync(file.fileno())
        logger.warning("%s: removed a torn last line of %d bytes (saved in %s.torn)",
                       self.trials_path, len(torn), self.TRIALS)
        return len(torn)

    # -- searcher state ------------------------------------------------------------------------------
    def write_searcher_state(self, strategy: str, state: dict[str, Any], told_trial_ids: list[int]) -> None:
        write_json_atomic(self.searcher_path, {
            "format": SEARCHER_FORMAT,
            SCHEMA_KEY: SEARCHER_VERSION,
            "strategy": strategy,
            "saved_at": now_iso(),
            # which finished trials this state has learned from: the replay on resume tells the
            # searcher exactly the trials.jsonl records missing from this list
            "told_trial_ids": sorted(told_trial_ids),
            "state": state,
        })

    def read_searcher_state(self) -> dict[str, Any] | None:
        if not self.searcher_path.is_file():
            return None
        data = read_json_object(self.searcher_path, "searcher state")
        if data.get("format") != SEARCHER_FORMAT:
            raise RunDirError(f"{self.searcher_path}: not a searcher state (format != {SEARCHER_FORMAT!r})")
        check_version(data, SEARCHER_VERSION, str(self.searcher_path))
        return data

    # -- best ----------------------------------------------------------------------------------------
    def write_best(self, arch: ArchSpec, metrics: BestMetrics, *,
                   state_dict: dict[str, torch.Tensor] | None = None,
                   weights_file: str | os.PathLike | None = None) -> None:
        """Weights first, then arch.json, then metrics.json: metrics.json names the trial, so a
        reader that finds it also finds that trial's weights and architecture."""
        self.best_dir.mkdir(parents=True, exist_ok=True)
        (self.best_dir / "metrics.json").unlink(missing_ok=True)  # incomplete until rewritten
        if state_dict is not None:
            write_atomically(self.best_weights_path, weights_payload(state_dict, arch))
        elif weights_file is not None:
            check_weights_file(Path(weights_file), arch)
            write_atomically(self.best_weights_path, Path(weights_file).read_bytes())
        else:
            self.best_weights_path.unlink(missing_ok=True)
        write_json_atomic(self.best_dir / "arch.json", arch.to_dict())
        write_json_atomic(self.best_dir / "metrics.json", metrics.to_json())

    def read_best_metrics(self, *, required: bool = False) -> BestMetrics | None:
        path = self.best_dir / "metrics.json"
        if path.is_file():
            return BestMetrics.from_json(read_json_object(path, "best metrics"), str(path))
        if required:  # written last: a kill while best/ was being saved; the resume rewrites it
            raise RunDirError(f"{path} is missing; `nas search --resume` repairs best/")
        return None

    def read_best_arch(self) -> ArchSpec:
        path = self.best_dir / "arch.json"
        if not path.is_file():
            raise InputFileError(f"{path} does not exist: the run has no feasible trial yet")
        return ArchSpec.from_dict(read_json_object(path, "architecture"))

    def update_best_metrics(self, **changes: Any) -> BestMetrics:
        """metrics.json with `changes` (BestMetrics fields); best/'s other files stay as they are."""
        metrics = replace(self.read_best_metrics(required=True), **changes)
        write_json_atomic(self.best_dir / "metrics.json", metrics.to_json())
        return metrics

    @contextmanager
    def writing(self, *, new: bool) -> Iterator[None]:
        """Hold the run's writer lock (an OS lock on `.lock`: the kernel drops it when the holder
        dies, so a killed run leaves no stale lock). A second writer is refused, naming the
        holder's PID; readers (report, export) take no lock. `new`: the run must not exist yet,
        checked again under the lock, so two new runs of one name cannot both start."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                raise RunDirError(f"{self.path} is being written by process {holder} (a search or resume "
                                  "is running); wait for it to finish or stop it") from None
            if new and self.exists():
                raise RunDirError(f"{self.path} already holds a search; resume it with --resume {self.path} "
                                  "or choose another --name")
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            yield  # the lock is released when the file closes, or by the kernel if we die

    def clear(self) -> None:
        """Remove a run's files (benchmarks, whose runs live in their own work directory)."""
        if self.path.exists():
            shutil.rmtree(self.path)

    def replace_demo_run(self) -> None:
        """Empty this directory for a fresh demo, if it is one the demo made (it holds the demo
        marker), or create it. Anything else is refused: nothing the tool did not make is deleted."""
        marker = self.path / DEMO_MARKER
        if self.path.exists() and any(self.path.iterdir()):
            if not marker.is_file():
                raise RunDirError(f"{self.path} exists and is not a demo run (no {DEMO_MARKER}); "
                                  "choose another --name or remove it yourself")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        marker.write_text("made by `nas demo`, which replaces this directory on its next run\n")


def run_directory(runs_dir: str | os.PathLike, name: str) -> RunDirectory:
    """The run `name` under `runs_dir`; `name` is one path component, so a run never lands, or
    deletes, anything outside `runs_dir`."""
    if (not isinstance(name, str) or not RUN_NAME.fullmatch(name) or name in (".", "..")):
        raise RunDirError(f"--name={name!r}: a run name is one path component of letters, digits, '.', '_' "
                          "and '-' (not starting with '.'), e.g. mnasnet-2ms")
    return RunDirectory(Path(runs_dir) / name)


def check_weights_file(path: Path, arch: ArchSpec) -> None:
    """Weights another process wrote (a Ray worker) must carry `arch`'s hash and intact digests."""
    entries, metadata, data_start = read_header(path)
    if metadata.get("arch_hash") != arch.content_hash():
        raise WeightsError(f"{path}: weights for arch_hash {metadata.get('arch_hash')}, the trial's architecture "
                           f"hashes to {arch.content_hash()}")
    verify_digests(path, entries, metadata, data_start)


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    """safetensors (never pickle): contiguous CPU copies, written atomically."""
    write_atomically(path, weights_payload(state_dict, None))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
