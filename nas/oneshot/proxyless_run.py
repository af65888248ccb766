"""The files of a ProxylessNAS run: epoch checkpoints (so a killed search resumes from its last
finished epoch) and the run directory every strategy writes (`nas search --strategy proxyless`).

Run directory (`nas.rundir.files` layout, plus `proxyless/`)::

    config.json            the `SearchConfig`; strategy "proxyless", its settings in strategy_options
    trials.jsonl           one trial: the derived architecture trained with config.train, its Result
    searcher.json          {"epoch", "finished", "choices", ...}: where the search stands
    best/                  arch.json, weights.safetensors, metrics.json of that trial
    proxyless/state.json   the checkpoint: epoch, config, optimizer scalars, history, file names
    proxyless/supernet-eNNNN.safetensors    supernet weights, BN buffers and logits after epoch NNNN
    proxyless/optimizers-eNNNN.safetensors  SGD momentum and Adam moments after epoch NNNN
    proxyless/alpha_history.json            per-slot probabilities after every epoch (for plots)

A checkpoint is written tensors first (new, epoch-named files), then state.json atomically, then
older tensor files are removed: a kill at any moment leaves a state.json naming complete files.
The derived network's trial is recorded like any strategy's; `latency_budget_ms` is the search's
target T, and the trial is trained and kept in best/ even when it lands above it (its record says
`feasible: false`): the one-shot search has no other candidate to offer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nas.rundir.files import RunDirectory, load_weights, now_iso, save_weights, write_json_atomic
from nas.strategies.base import Candidate, Result, SearchObjective
from nas.oneshot.proxyless import ProxylessConfig, ProxylessSearch

if TYPE_CHECKING:
    from nas.search.config import SearchConfig
    from nas.search.runner import SearchSummary

__all__ = ["STATE_DIR", "load_checkpoint", "proxyless_config_from", "run_proxyless_search", "save_checkpoint"]

logger = logging.getLogger(__name__)

STATE_DIR = "proxyless"
STATE_FILE = "state.json"
HISTORY_FILE = "alpha_history.json"
STATE_FORMAT = "hwnas-proxyless-state"
STRATEGY = "proxyless"


# -- checkpoints -------------------------------------------------------------------------------------

def _split_optimizer(state: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as safetensors tensors plus JSON (hyper-parameters, scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        scalars.setdefault(str(index), {})
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars[str(index)][key] = value
    return tensors, {"param_groups": state["param_groups"], "state": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(index): dict(values) for index, values in meta["state"].items()}
    for key, tensor in tensors.items():
        owner, index, name = key.split(".", 2)
        if owner == prefix:
            state[int(index)][name] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(search: ProxylessSearch, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"e{search.epoch:04d}"
    files = {"supernet": f"supernet-{tag}.safetensors", "optimizers": f"optimizers-{tag}.safetensors"}
    save_weights(directory / files["supernet"], search.supernet.state_dict())
    tensors: dict[str, torch.Tensor] = {}
    optimizers: dict[str, Any] = {}
    for name, optimizer in (("weight", search.weight_optimizer), ("arch", search.arch_optimizer)):
        part, optimizers[name] = _split_optimizer(optimizer.state_dict(), name)
        tensors.update(part)
    save_weights(directory / files["optimizers"], tensors)
    write_json_atomic(directory / HISTORY_FILE, search.alpha_history())
    write_json_atomic(directory / STATE_FILE, {
        "format": STATE_FORMAT, "epoch": search.epoch, "config": search.config.to_dict(),
        "layout": search.layout.to_dict(), "files": files, "optimizers": optimizers,
        "history": search.history, "saved_at": now_iso(),
    })
    for pattern in ("supernet-e*.safetensors", "optimizers-e*.safetensors"):
        for old in directory.glob(pattern):
            if old.name not in files.values():
                old.unlink(missing_ok=True)
    return directory / STATE_FILE


def load_checkpoint(search: ProxylessSearch, directory: Path) -> bool:
    path = directory / STATE_FILE
    if not path.is_file():
        return False
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: corrupt proxyless checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a proxyless checkpoint (format != {STATE_FORMAT!r})")
    # JSON has no tuples; compare through the same round trip
    ours = json.loads(json.dumps(search.config.to_dict()))
    if state["config"] != ours:
        changed = sorted(key for key in ours if state["config"].get(key) != ours[key])
        raise ValueError(f"{path}: checkpoint of other search settings ({', '.join(changed)} differ); "
                         "resume with the run's settings or start a new run")
    if state["layout"] != search.layout.to_dict():
        raise ValueError(f"{path}: checkpoint of another supernet layout (space or space options changed)")
    search.supernet.load_state_dict(load_weights(directory / state["files"]["supernet"]))
    tensors = load_weights(directory / state["files"]["optimizers"])
    search.weight_optimizer.load_state_dict(_join_optimizer(tensors, state["optimizers"]["weight"], "weight"))
    search.arch_optimizer.load_state_dict(_join_optimizer(tensors, state["optimizers"]["arch"], "arch"))
    search.epoch = int(state["epoch"])
    search.history = list(state["history"])
    logger.info("proxyless: resumed from the checkpoint of epoch %d/%d in %s", search.epoch, search.config.epochs,
                directory)
    return True


# -- the run directory -------------------------------------------------------------------------------

def proxyless_config_from(config: SearchConfig) -> ProxylessConfig:
    """The supernet settings of a run: `strategy_options`, with the target, seed, epochs, batch size
    and device taken from the `SearchConfig` (budget, seed, train.epochs, train.batch_size,
    train.device) unless the options set them."""
    options = dict(config.strategy_options)
    for reserved in ("target_ms", "seed"):
        if reserved in options:
            raise ValueError(f"strategy_options.{reserved}: set by the search (latency budget, seed), not an option")
    allowed = sorted(f.name for f in fields(ProxylessConfig) if f.name not in ("target_ms", "seed"))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"strategy_options {unknown} unknown to proxyless; allowed: {allowed}")
    # `--epochs` is the one epoch count a user sets; strategy_options may still split the two
    options.setdefault("epochs", config.train.epochs)
    options.setdefault("warmup_epochs", min(1, options["epochs"] - 1))
    options.setdefault("batch_size", config.train.batch_size)
    options.setdefault("device", config.train.device)
    return ProxylessConfig(target_ms=config.latency_budget_ms, seed=config.seed, **options)


def _resolve_config(directory: RunDirectory, config: SearchConfig | None, resume: bool,
                    given: dict[str, Any] | None) -> SearchConfig:
    from nas.search.config import SearchConfig

    if resume:
        stored = SearchConfig.from_dict(directory.read_config())
        overrides = {**(config.to_dict() if config is not None else {}), **(given or {})}
        return stored.resumed_with(overrides)
    if config is None:
        raise ValueError("run_proxyless_search: config is required for a new run")
    if directory.exists():
        raise FileExistsError(f"{directory.path} already holds a search; resume it with "
                              f"--resume {directory.path} or choose another --name")
    return config


def _best_metrics(record: dict[str, Any], result: Result, objective: SearchObjective,
                  search: ProxylessSearch) -> dict[str, Any]:
    last = search.history[-1]
    return {
        "trial_id": record["trial_id"], "arch_hash": record["arch_hash"], "blocks": record["blocks"],
        "val_accuracy": result.accuracy, "latency_ms": result.latency_ms,
        "measured_latency_ms": result.measured_latency_ms, "params": result.params, "macs": result.macs,
        "reward": record["reward"], "epochs": result.epochs, "train_time_s": result.train_time_s,
        "latency_budget_ms": objective.latency_budget_ms, "weights": "weights.safetensors", "weights_from": "trial",
        "updated_at": now_iso(), "strategy": STRATEGY, "feasible": record["feasible"],
        "search_epochs": search.epoch, "search_expected_latency_ms": last["expected_latency_ms"],
    }


def run_proxyless_search(config: SearchConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
                         progress: bool = True, given: dict[str, Any] | None = None) -> SearchSummary:
    """`run_search` for strategy "proxyless": same arguments, same run directory, same summary."""
    from nas.search.trial import precheck, train_candidate
    from nas.search.runner import SearchSummary, load_search_data, open_table
    from nas.search.session import trial_record
    from search_spaces.spaces import get_space

    started = time.perf_counter()
    directory = RunDirectory(run_dir)
    config = _resolve_config(directory, config, resume, given)
    if config.strategy != STRATEGY:
        raise ValueError(f"run_proxyless_search: strategy={config.strategy!r}, expected {STRATEGY!r}")
    if config.uses_ray:
        logger.warning("proxyless trains one supernet in this process; the Ray settings are not used")
    directory.path.mkdir(parents=True, exist_ok=True)
    directory.repair_trials()
    data = load_search_data(config)
    if config.num_classes not in (None, data.num_classes):
        raise ValueError(f"SearchConfig.num_classes={config.num_classes} but dataset {config.dataset!r} "
                         f"has {data.num_classes} classes")
    config = replace(config, num_classes=data.num_classes)
    directory.write_config(config.to_dict())
    space = get_space(config.space, resolution=config.resolution, num_classes=data.num_classes,
                      **config.space_options)
    table = open_table(config, space)
    objective = SearchObjective(config.latency_budget_ms, config.constraint)
    search = ProxylessSearch(space, table, data, proxyless_config_from(config))
    state_dir = directory.path / STATE_DIR
    search.load(state_dir)

    def save_state(finished: bool) -> None:
        directory.write_searcher_state(STRATEGY, {
            "name": STRATEGY, "epoch": search.epoch, "epochs": search.config.epochs, "finished": finished,
            "choices": search.choices(), "derived": search.layout.describe(search.choices()),
            "checkpoint": str(Path(STATE_DIR) / STATE_FILE),
        }, [0] if finished else [])

    while search.epoch < search.config.epochs:
        search.run_epoch()
        search.save(state_dir)
        save_state(False)
    arch = search.derive()
    candidate = Candidate(0, arch, info={"strategy": STRATEGY, "choices": search.choices(),
                                         "derived": search.layout.describe(search.choices())})
    records = directory.read_trials()
    record = records[0] if records else None
    metrics = directory.read_best_metrics()
    if record is not None and metrics is not None and metrics.get("trial_id") == 0 \
            and directory.best_weights_path.is_file():
        logger.info("%s: the derived network's trial is already recorded", directory.path)
        result = Result.from_dict(record["result"])
    else:
        # the budget is the search's target: the derived network is trained even above it
        checked = precheck(candidate, table, SearchObjective(config.latency_budget_ms, "soft"))
        model = None
        if checked.verdict is not None:
            result = checked.verdict
        else:
            result, model = train_candidate(candidate, checked, data=data, train_config=config.train)
        result = replace(result, extra={**result.extra, "search": {
            "epochs": search.epoch, "target_ms": search.config.target_ms,
            "expected_latency_ms": search.history[-1]["expected_latency_ms"],
            "probabilities": search.history[-1]["probabilities"]}})
        if record is None:
            record = trial_record(candidate, result, objective)
            directory.append_trial(record)
        if not record["feasible"]:
            logger.warning("proxyless: the derived network's predicted latency %s ms exceeds the budget %g ms",
                           result.latency_ms, config.latency_budget_ms)
        if model is not None:
            directory.write_best(arch, _best_metrics(record, result, objective, search),
                                 state_dict=model.state_dict())
    save_state(True)
    status = result.status
    return SearchSummary(directory.path, 1, int(status == "ok"), int(status == "failed"),
                         int(status == "infeasible"), record if status == "ok" else None,
                         time.perf_counter() - started, resumed=resume, replayed=0)
