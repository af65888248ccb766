"""Epoch checkpoints of an elastic-supernet training, and the supernet rebuilt from one.

Files in the checkpoint directory (a run's `supernet/`)::

    state.json                    epoch, space (name, resolution, classes, options), config, history, files
    supernet-eNNNN.safetensors    supernet weights and BN buffers after epoch NNNN
    optimizer-eNNNN.pt            SGD state (our own file: torch.save, read with weights_only=True)

Written tensors first (new epoch-named files), then state.json atomically, then older files
removed: a kill at any moment leaves a state.json naming complete files of a finished epoch.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_config import OFATrainConfig
from nas.rundir.atomic import now_iso, write_json_atomic
from nas.rundir.files import RunDirError, load_weights, read_json_object, save_weights
from search_spaces.atomic_files import write_atomically
from search_spaces.space import SearchSpace
from search_spaces.spaces import get_space

__all__ = ["STATE_FILE", "load_supernet", "read_state", "save_checkpoint", "space_record"]

STATE_FILE = "state.json"
STATE_FORMAT = "hwnas-ofa-supernet"
# settings that may change between a run and its resume without changing the result's meaning
RESUMABLE_CHANGES = ("device",)


def space_record(space: SearchSpace) -> dict[str, Any]:
    return {"name": space.name, "resolution": space.resolution, "num_classes": space.num_classes,
            "options": dict(getattr(space, "options", {}) or {})}


def save_checkpoint(supernet: ElasticSupernet, optimizer: torch.optim.Optimizer, config: OFATrainConfig,
                    epoch: int, history: list[dict[str, Any]], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"e{epoch:04d}"
    files = {"supernet": f"supernet-{tag}.safetensors", "optimizer": f"optimizer-{tag}.pt"}
    save_weights(directory / files["supernet"], supernet.state_dict())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    write_atomically(directory / files["optimizer"], buffer.getvalue())
    write_json_atomic(directory / STATE_FILE, {
        "format": STATE_FORMAT, "epoch": epoch, "space": space_record(supernet.space), "config": config.to_dict(),
        "files": files, "history": history, "saved_at": now_iso(),
    })
    for pattern in ("supernet-e*.safetensors", "optimizer-e*.pt"):
        for old in directory.glob(pattern):
            if old.name not in files.values():
                old.unlink(missing_ok=True)
    return directory / STATE_FILE


def read_state(directory: Path) -> dict[str, Any] | None:
    """The checkpoint's state.json, or None when the directory holds none."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    state = read_json_object(path, "supernet checkpoint")
    if state.get("format") != STATE_FORMAT:
        raise RunDirError(f"{path}: not an elastic-supernet checkpoint (format != {STATE_FORMAT!r})")
    return state


def check_resumable(state: dict[str, Any], supernet: ElasticSupernet, config: OFATrainConfig, directory: Path) -> None:
    path = directory / STATE_FILE
    saved = state.get("space")
    ours = json.loads(json.dumps(space_record(supernet.space)))
    if saved != ours:
        raise RunDirError(f"{path}: checkpoint of another space ({saved}); this supernet is {ours}")
    mine = json.loads(json.dumps(config.to_dict()))
    # a setting added after the checkpoint was written had its default then
    defaults = json.loads(json.dumps(OFATrainConfig().to_dict()))
    changed = sorted(k for k in mine if k not in RESUMABLE_CHANGES and state["config"].get(k, defaults[k]) != mine[k])
    if changed:
        raise RunDirError(f"{path}: checkpoint of other training settings ({', '.join(changed)} differ); "
                          "resume with the run's settings or start a new run")


def load_weights_into(state: dict[str, Any], supernet: ElasticSupernet, optimizer: torch.optim.Optimizer | None,
                      directory: Path) -> None:
    supernet.load_state_dict(load_weights(directory / state["files"]["supernet"]))
    if optimizer is not None:
        saved = torch.load(directory / state["files"]["optimizer"], weights_only=True, map_location="cpu")
        optimizer.load_state_dict(saved)
    supernet.epoch = int(state["epoch"])


def load_supernet(checkpoint_dir: Path) -> tuple[ElasticSupernet, dict[str, Any]]:
    """The supernet of a checkpoint directory (space rebuilt from state.json) and that state."""
    directory = Path(checkpoint_dir)
    state = read_state(directory)
    if state is None:
        raise RunDirError(f"{directory}: no {STATE_FILE}; train a supernet there first (nas supernet train)")
    record = state["space"]
    space = get_space(record["name"], resolution=record["resolution"], num_classes=record["num_classes"],
                      **record["options"])
    supernet = ElasticSupernet(space)
    load_weights_into(state, supernet, None, directory)
    supernet.eval()
    return supernet, state
