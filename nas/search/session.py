"""`SearchSession`: the bookkeeping of one run, shared by the in-process loop and the Ray adapter.

It owns the order of the durable steps, which is what makes a kill at any moment recoverable:

    ask    -> searcher.ask(), then searcher.json (so a resumed run never re-issues that trial id)
    finish -> append to trials.jsonl (the trial now counts) -> searcher.tell -> searcher.json
              -> best/ (when the trial is the new best feasible one)

On resume, `replay` tells the searcher every trials.jsonl record its saved state has not learned
from (the run was killed between the append and the state save), and `reconcile_best` retrains
the best trial when best/ does not hold it (killed between the append and the best save, or a
Ray worker whose weights the driver cannot read). A trial that was asked but never finished
is simply gone: its id is not reused and the searcher asks a fresh candidate in its place.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from torch import nn

from nas.rundir.files import RunDirError, RunDirectory, now_iso
from nas.rundir.records import BestMetrics, TrialRecord
from nas.strategies.base import ONE_SHOT, Candidate, Result, Searcher, SearchObjective

logger = logging.getLogger(__name__)

__all__ = ["SearchSession", "trial_record"]

Listener = Callable[["SearchSession"], None]
Retrainer = Callable[[Candidate], "nn.Module | None"]


def trial_record(candidate: Candidate, result: Result, objective: SearchObjective, *, executor: str = "local",
                 executor_trial_id: str | None = None) -> TrialRecord:
    """The trials.jsonl line of a trial just finished, judged by `objective`."""
    return TrialRecord(candidate, result, objective.reward(result), objective.feasible(result), now_iso(),
                       executor, executor_trial_id)


class SearchSession:
    def __init__(self, run_dir: RunDirectory, searcher: Searcher, objective: SearchObjective, trials: int,
                 *, told_trial_ids: set[int] | None = None, weights: bool = True) -> None:
        self.run_dir = run_dir
        # False: trials produce no weights (answered from a table), so best/ holds none by design
        self.weights = weights
        self.searcher = searcher
        self.objective = objective
        self.trials = trials
        self.records: list[TrialRecord] = run_dir.read_trials()
        self.finished_ids: set[int] = set()
        for record in self.records:
            if record.trial_id in self.finished_ids:
                raise RunDirError(f"{run_dir.trials_path}: trial_id {record.trial_id} appears twice (two writers?); "
                                  f"`nas search --resume {run_dir.path} --repair` keeps one line per trial")
            self.finished_ids.add(record.trial_id)
        self.told: set[int] = set(told_trial_ids or ())
        self._check_agreement()
        self.listeners: list[Listener] = []
        self.started = time.perf_counter()
        self.session_finished = 0  # trials finished by this process (for the time-left estimate)
        self.best: TrialRecord | None = None
        for record in self.records:
            if self._better(record):
                self.best = record

    def _check_agreement(self) -> None:
        """Refuse to resume when the run files contradict trials.jsonl: a trial the searcher was
        told of, or the one best/ holds, must have its line (both are written after it). Going on
        would retrain over a finished model or reuse trial ids, so stop and say which file lies."""
        lost = sorted(self.told - self.finished_ids)
        repair = (f"`nas search --resume {self.run_dir.path} --repair` rebuilds trials.jsonl from what best/ and "
                  f"searcher.json prove (keeping the files as *.before-repair)")
        if lost:
            raise RunDirError(
                f"{self.run_dir.trials_path} lacks trial(s) {lost[:10]} that {self.run_dir.searcher_path.name} "
                f"records as finished (lines lost?); {repair}, or restore trials.jsonl from a backup "
                f"(nothing was changed)")
        metrics = self.run_dir.read_best_metrics() if self.run_dir.best_dir.exists() else None
        if metrics is not None and metrics.trial_id not in self.finished_ids:
            raise RunDirError(
                f"{self.run_dir.best_dir}/ holds trial {metrics.trial_id}, which {self.run_dir.trials_path.name} "
                f"does not record (lines lost?); {repair}, or restore trials.jsonl (nothing was changed)")

    # -- progress ----------------------------------------------------------------------------------
    @property
    def finished(self) -> int:
        return len(self.records)

    @property
    def remaining(self) -> int:
        return max(0, self.trials - self.finished)

    def mean_trial_s(self) -> float | None:
        if not self.session_finished:
            return None
        return (time.perf_counter() - self.started) / self.session_finished

    def counts(self) -> dict[str, int]:
        return {"ok": 0, "failed": 0, "infeasible": 0} | Counter(record.result.status for record in self.records)

    # -- the durable steps -------------------------------------------------------------------------
    def save_state(self) -> None:
        self.run_dir.write_searcher_state(self.searcher.name, self.searcher.state_dict(), sorted(self.told))

    def ask(self) -> Candidate:
        candidate = self.searcher.ask()
        if candidate.trial_id in self.finished_ids:
            # a strategy that manages its own ids and reused one: refusing beats a duplicate record
            raise RuntimeError(f"{self.searcher.name} asked trial_id {candidate.trial_id}, which already finished")
        self.save_state()
        return candidate

    def finish(self, candidate: Candidate, result: Result, *, model: nn.Module | None = None,
               weights_file: str | Path | None = None, executor: str = "local",
               executor_trial_id: str | None = None) -> TrialRecord | None:
        """Record a finished trial; returns its record (None for a duplicate report)."""
        if candidate.trial_id in self.finished_ids:
            logger.warning("trial %d reported twice; keeping the first result", candidate.trial_id)
            return None
        record = trial_record(candidate, result, self.objective, executor=executor,
                              executor_trial_id=executor_trial_id)
        self.run_dir.append_trial(record)
        self.records.append(record)
        self.finished_ids.add(candidate.trial_id)
        self.session_finished += 1
        self.searcher.tell(candidate, result)
        self.told.add(candidate.trial_id)
        self.save_state()
        if self._better(record):
            self.best = record
            if self.weights and model is None and (weights_file is None or not Path(weights_file).is_file()):
                logger.warning("trial %d is the new best but its weights are not readable here; "
                               "they will be regenerated", candidate.trial_id)
            self._write_best(record, model=model, weights_file=weights_file)
        status = result.status + (f" ({result.reason})" if result.reason else "")
        logger.info("trial %d: %s, acc %s, latency %s ms", candidate.trial_id, status,
                    _fmt(result.accuracy), _fmt(result.latency_ms))
        for listener in self.listeners:
            listener(self)
        return record

    # -- resume ------------------------------------------------------------------------------------
    def replay(self) -> int:
        """Tell the searcher the finished trials its saved state has not learned from, and make
        sure it never hands out a finished trial's id again. Returns how many were told."""
        replayed = 0
        for record in self.records:
            if record.trial_id in self.told:
                continue
            self.searcher.tell(record.candidate, record.result)
            self.told.add(record.trial_id)
            replayed += 1
        if self.finished_ids:
            self.searcher.next_trial_id = max(self.searcher.next_trial_id, max(self.finished_ids) + 1)
        if replayed:
            logger.warning("replayed %d finished trial(s) the saved searcher state had not been told", replayed)
        self.save_state()
        return replayed

    def reconcile_best(self, retrain: Retrainer) -> None:
        """Make best/ hold the best feasible finished trial, retraining it when its weights are missing."""
        metrics = self.run_dir.read_best_metrics()
        if self.best is None:
            if self.run_dir.best_dir.exists():
                logger.warning("best/ holds no finished trial; removing it")
                import shutil

                shutil.rmtree(self.run_dir.best_dir)
            return
        complete = (metrics is not None and metrics.trial_id == self.best.trial_id
                    and (not self.weights or self.run_dir.best_weights_path.is_file()) and (self.run_dir.best_dir / "arch.json").is_file())
        if complete:
            return
        candidate = self.best.candidate
        logger.warning("best/ does not hold trial %d's weights (killed before they were saved, or written on "
                       "another node); retraining it with the trial's seed", candidate.trial_id)
        model = retrain(candidate)
        if model is None:
            logger.error("retraining trial %d failed; best/ keeps its architecture without weights", candidate.trial_id)
        self._write_best(self.best, model=model, weights_from="retrained")

    # -- best --------------------------------------------------------------------------------------
    def _better(self, record: TrialRecord) -> bool:
        # best = highest validation accuracy among feasible trials (a one-shot strategy's derived
        # network whatever its latency: it is the search's answer); ties keep the earlier one
        accuracy = record.result.accuracy
        if accuracy is None or not (record.feasible or self.searcher.kind == ONE_SHOT):
            return False
        return self.best is None or accuracy > self.best.result.accuracy

    def _write_best(self, record: TrialRecord, *, model: nn.Module | None = None,
                    weights_file: str | Path | None = None, weights_from: str = "trial") -> None:
        has_weights = model is not None or (weights_file is not None and Path(weights_file).is_file())
        metrics = BestMetrics.from_trial(record, self.objective.latency_budget_ms,
                                         weights_from=weights_from if has_weights else None)
        self.run_dir.write_best(record.arch, metrics,
                                state_dict=model.state_dict() if model is not None else None,
                                weights_file=weights_file if model is None and has_weights else None)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
