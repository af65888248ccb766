"""Evaluating one candidate: predict its latency, check the budget, count its cost, train it.

Two halves, because the Ray path runs them in different processes: `precheck` (cheap, no
training: latency from the table, params and MACs, the budget verdict) runs where the searcher
lives, `train_candidate` wherever there is a CPU to train on. `evaluate_candidate` is the two in
a row, for the in-process loop (and `nas.search.memory`'s run without a run directory).

A tabular dataset (`--dataset nb201:cifar10`, a `predictors.tabular.TabularDataset`) is answered,
not trained: `answer_candidate` looks the candidate up after the same precheck (params and MACs
then come from the table, which equals our own count on NB201). Its `Result`: `accuracy` is the
table's observed column in [0, 1] (NB201: the 200-epoch *test* accuracy by default, the 12-epoch
validation accuracy with `:12ep`), `epochs` the length of the schedule that produced it (200 or
12), `train_time_s` that schedule's training time when the table records it (NB201's does not:
None), no model, and `extra` names the table row and column. Every way a trial can go wrong ends in a `Result` with a reason
rather than an exception: a trial is data about the space, and the search goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from nas.training.data import DataSplits
from nas.rundir.model_files import load as load_model
from nas.strategies.base import EPOCHS, INITIAL_WEIGHTS, Candidate, Result, SearchObjective
from nas.training.train import EpochCallback, TrainConfig, train
from predictors.latency import LatencyModel, Measurer, MissingEntriesError
from predictors.tabular import TabularDataset
from search_spaces.build import build_model
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

__all__ = ["Precheck", "answer_candidate", "evaluate_candidate", "failure_reason", "precheck", "retrain",
           "train_candidate"]

Cost = Callable[[ArchSpec], "tuple[int, int | None]"]


def failure_reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class Precheck:
    """What is known before training. `verdict` is set when the trial ends here (failed or
    infeasible); otherwise the candidate should be trained."""

    latency_ms: float | None = None
    params: int | None = None
    macs: int | None = None
    verdict: Result | None = None

    @property
    def costs(self) -> dict[str, Any]:
        """The figures a `Result` of this candidate carries, whatever becomes of its training."""
        return {"latency_ms": self.latency_ms, "params": self.params, "macs": self.macs}


def count_cost(arch: ArchSpec, model: nn.Module | None = None) -> tuple[int, int]:
    """(params, MACs). MACs in closed form from the spec (microseconds; equal to fvcore's count by
    the cost tests), falling back to `predictors.cost.count` for ops without a formula. Params are
    counted on the built model."""
    from predictors.cost import count, macs_of_spec

    if model is None:
        with torch.random.fork_rng(devices=[]):  # building draws init values: not from the caller's RNG
            model = build_model(arch)
    params = sum(parameter.numel() for parameter in model.parameters())
    try:
        return params, macs_of_spec(arch)
    except NotImplementedError:
        return params, count(arch).macs


def precheck(candidate: Candidate, table: LatencyModel, objective: SearchObjective,
             cost: Cost | None = None) -> Precheck:
    """Latency from the model, (params, MACs) from `cost` (default `count_cost`), budget verdict."""
    arch = candidate.arch
    try:
        latency_ms = table.predict(arch)
    except MissingEntriesError as error:
        reason = f"latency table lacks {len(error.keys)} layer(s): {', '.join(error.keys)}"
        logger.warning("trial %d: %s", candidate.trial_id, reason)
        return Precheck(verdict=Result(status="failed", reason=reason, extra={"missing_keys": list(error.keys)}))
    except Exception as error:  # a spec the table cannot even enumerate
        logger.exception("trial %d: latency prediction failed", candidate.trial_id)
        return Precheck(verdict=Result(status="failed", reason=failure_reason(error)))
    try:
        params, macs = (cost or count_cost)(arch)
    except Exception as error:  # the builder refused the architecture
        logger.exception("trial %d: could not build the architecture", candidate.trial_id)
        return Precheck(latency_ms, verdict=Result(status="failed", latency_ms=latency_ms,
                                                   reason=failure_reason(error)))
    budget = objective.latency_budget_ms
    # Under a hard constraint an over-budget network can never be chosen: no trial time is spent
    # on it. Under a soft one it is a legitimate (penalised) candidate and is trained.
    if objective.constraint == "hard" and latency_ms > budget:
        reason = f"predicted latency {latency_ms:.3f} ms > budget {budget:g} ms"
        logger.info("trial %d: infeasible, %s", candidate.trial_id, reason)
        return Precheck(latency_ms, params, macs, Result(
            status="infeasible", latency_ms=latency_ms, params=params, macs=macs, reason=reason))
    return Precheck(latency_ms, params, macs)


def _build_seeded(arch: ArchSpec, seed: int) -> nn.Module:
    # every trial starts from the same seed: differences between trials are the architecture's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch)


def _initial_model(candidate: Candidate, seed: int) -> nn.Module:
    source = candidate.info.get(INITIAL_WEIGHTS)
    if source is None:
        return _build_seeded(candidate.arch, seed)
    model = load_model(source)  # checked files (digests, shapes, no pickle)
    if model.spec != candidate.arch:
        raise ValueError(f"trial {candidate.trial_id}: {source} holds another architecture than the candidate's")
    return model


def train_candidate(
    candidate: Candidate,
    checked: Precheck,
    *,
    data: DataSplits,
    train_config: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> tuple[Result, nn.Module | None]:
    """Train a candidate that passed `precheck`; the model is returned only when the trial is ok."""
    known = checked.costs
    start = time.perf_counter()
    try:
        model = _initial_model(candidate, train_config.seed)
        epochs = candidate.info.get(EPOCHS)
        config = train_config if epochs is None else replace(train_config, epochs=int(epochs))
        report = train(model, data, config, on_epoch=on_epoch)
    except Exception as error:
        logger.exception("trial %d failed", candidate.trial_id)
        return Result(status="failed", reason=failure_reason(error),
                      train_time_s=time.perf_counter() - start, **known), None
    extra: dict[str, Any] = {"val_accuracy_per_epoch": report.val_accuracy_per_epoch,
                             "train_loss": report.train_loss}
    if report.reason and report.status == "ok":
        extra["note"] = report.reason  # stopped early by on_epoch (ASHA)
    if report.status != "ok" or not math.isfinite(report.val_accuracy):
        return Result(status="failed", reason=report.reason or "non-finite validation accuracy",
                      train_time_s=report.train_time_s, epochs=report.epochs_run, extra=extra, **known), None
    result = Result(status="ok", accuracy=report.val_accuracy, train_time_s=report.train_time_s,
                    epochs=report.epochs_run, extra=extra, **known)
    return result, model


def answer_candidate(candidate: Candidate, checked: Precheck, data: TabularDataset) -> Result:
    """A candidate that passed `precheck`, answered from a tabular dataset (see the module doc)."""
    known = {"latency_ms": checked.latency_ms, "params": checked.params, "macs": checked.macs}
    try:
        answer = data.answer(candidate.arch, epochs=candidate.info.get(EPOCHS))
    except Exception as error:  # not a cell of the table
        logger.exception("trial %d: %s cannot answer it", candidate.trial_id, data.name)
        return Result(status="failed", reason=failure_reason(error), **known)
    return Result(status="ok", accuracy=answer.accuracy, epochs=answer.epochs, train_time_s=answer.train_time_s,
                  extra={"tabular": data.name, "table_index": answer.index, "observed": answer.column}, **known)


def _measure(arch: ArchSpec, table: LatencyModel) -> float:
    from predictors.latency import LocalMeasurer

    measurer = LocalMeasurer(str(table.metadata.get("backend", "onnxruntime")),
                             threads=int(table.metadata.get("threads", 1)))
    return measurer.measure_archs([arch])[0].median_ms


def evaluate_candidate(
    candidate: Candidate,
    *,
    data: DataSplits | TabularDataset,
    train_config: TrainConfig,
    table: LatencyModel,
    objective: SearchObjective,
    on_epoch: EpochCallback | None = None,
    measure_latency: bool = False,
) -> tuple[Result, nn.Module | None]:
    """precheck, then train (or answer from a tabular dataset: no model). With `measure_latency`,
    an ok trained trial is also timed end to end on the table's backend and thread count (a
    measuring error is logged, not a trial failure)."""
    if isinstance(data, TabularDataset):
        checked = precheck(candidate, table, objective, cost=data.cost)
        return (checked.verdict or answer_candidate(candidate, checked, data)), None
    checked = precheck(candidate, table, objective)
    if checked.verdict is not None:
        return checked.verdict, None
    result, model = train_candidate(candidate, checked, data=data, train_config=train_config, on_epoch=on_epoch)
    if measure_latency and model is not None:
        try:
            result = replace(result, measured_latency_ms=_measure(candidate.arch, table))
        except Exception as error:
            logger.warning("trial %d: end-to-end measurement failed: %s", candidate.trial_id, failure_reason(error))
            result = replace(result, extra={**result.extra, "measure_error": failure_reason(error)})
    return result, model


def retrain(
    arch: ArchSpec,
    data: DataSplits,
    train_config: TrainConfig,
    measurer: Measurer | None,
    table: LatencyModel | None = None,
    *,
    progress: bool = False,
) -> tuple[dict[str, Any], nn.Module]:
    """The final step of a search: train `arch` from scratch on train (val for monitoring),
    report test accuracy, and compare the table's prediction with an end-to-end measurement."""
    model = _build_seeded(arch, train_config.seed)
    report = train(model, data, train_config, evaluate_test=True, progress=progress)
    if report.status != "ok":
        raise RuntimeError(f"retraining the best architecture failed: {report.reason}")
    params, macs = count_cost(arch, model)
    metrics: dict[str, Any] = {
        "final_epochs": report.epochs_run,
        "final_val_accuracy": report.val_accuracy,
        "test_accuracy": report.test_accuracy,
        "final_train_time_s": report.train_time_s,
        "params": params,
        "macs": macs,
    }
    if table is not None:
        metrics["predicted_latency_ms"] = table.predict(arch)
    if measurer is not None:
        from predictors.latency.machine_load import OtherLoad

        with OtherLoad() as load:
            measurement = measurer.measure_archs([arch])[0]
        # a remote agent's machine is not this one: only a local measurement knows its load
        where = measurer.metadata()  # an agent's answers over HTTP: ask once
        if load.cores is not None and not where.get("remote_url"):
            metrics["measured_other_load_cores"] = round(load.cores, 2)
        metrics["measured_latency_ms"] = measurement.median_ms
        metrics["measured_latency_p10_ms"] = measurement.p10_ms
        metrics["measured_latency_p90_ms"] = measurement.p90_ms
        metrics["measured_with"] = {key: where.get(key) for key in ("backend", "threads", "device")}
    return metrics, model
