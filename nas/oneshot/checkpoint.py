"""Epoch checkpoints of a ProxylessNAS search, so a killed search resumes from its last finished epoch.

Files (in the run's `proxyless/`)::

    state.json                       epoch, config, optimizer scalars, history, file names
    supernet-eNNNN.safetensors       supernet weights, BN buffers and logits after epoch NNNN
    optimizers-eNNNN.safetensors     SGD momentum and Adam moments after epoch NNNN
    alpha_history.json               per-slot probabilities after every epoch (for plots)

A checkpoint is written tensors first (new, epoch-named files), then state.json atomically, then
older tensor files are removed: a kill at any moment leaves a state.json naming complete files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from nas.oneshot.proxyless import ProxylessSearch
from nas.rundir.files import RunDirError, load_weights, now_iso, read_json_object, save_weights, write_json_atomic

__all__ = ["HISTORY_FILE", "STATE_FILE", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
HISTORY_FILE = "alpha_history.json"
STATE_FORMAT = "hwnas-proxyless-state"


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
    state = read_json_object(path, "proxyless checkpoint")
    if state.get("format") != STATE_FORMAT:
        raise RunDirError(f"{path}: not a proxyless checkpoint (format != {STATE_FORMAT!r})")
    # JSON has no tuples; compare through the same round trip
    ours = json.loads(json.dumps(search.config.to_dict()))
    if state["config"] != ours:
        changed = sorted(key for key in ours if state["config"].get(key) != ours[key])
        raise RunDirError(f"{path}: checkpoint of other search settings ({', '.join(changed)} differ); "
                         "resume with the run's settings or start a new run")
    if state["layout"] != search.layout.to_dict():
        raise RunDirError(f"{path}: checkpoint of another supernet layout (space or space options changed)")
    search.supernet.load_state_dict(load_weights(directory / state["files"]["supernet"]))
    tensors = load_weights(directory / state["files"]["optimizers"])
    search.weight_optimizer.load_state_dict(_join_optimizer(tensors, state["optimizers"]["weight"], "weight"))
    search.arch_optimizer.load_state_dict(_join_optimizer(tensors, state["optimizers"]["arch"], "arch"))
    search.epoch = int(state["epoch"])
    search.history = list(state["history"])
    logger.info("proxyless: resumed from the checkpoint of epoch %d/%d in %s", search.epoch, search.config.epochs,
                directory)
    return True
