"""Final trainings cached by (architecture hash, recipe, seed): a re-run of a benchmark, or one
more seed, trains only what it has not trained before.

The cache is one JSON file per training under a folder: `<arch hash>-<recipe hash>-s<seed>.json`,
written atomically when the training ends, so a killed benchmark loses only the trainings that
were running. The recipe hash covers every field of the `TrainConfig` except the seed, and the
dataset string with its train limit, so changing any of them trains afresh.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from nas.rundir.atomic import write_json_atomic
from nas.training.train import TrainConfig
from search_spaces.spec import ArchSpec

__all__ = ["cache_path", "cached_final", "recipe_hash"]


def recipe_hash(config: TrainConfig, dataset: str, limit: int | None) -> str:
    fields = {**asdict(replace(config, seed=0)), "dataset": dataset, "limit": limit}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(arch: ArchSpec, config: TrainConfig, dataset: str, cache: Path, limit: int | None = None) -> Path:
    return cache / f"{arch.content_hash()[:16]}-{recipe_hash(config, dataset, limit)}-s{config.seed}.json"


def cached_final(arch: ArchSpec, config: TrainConfig, dataset: str, cache: Path, *, resolution: int,
                 limit: int | None = None) -> dict[str, Any]:
    """Train `arch` from scratch with `config` (seed = its seed, for the initialisation and the
    data split too) and return its figures, or the cached ones of an identical earlier training."""
    path = cache_path(arch, config, dataset, cache, limit)
    if path.is_file():
        return {**json.loads(path.read_text()), "cached": True}
    from nas.training import load_dataset, train
    from nas.search.trial import count_cost
    from nas.training.device import resolve_device
    from search_spaces.build import build_model

    data = load_dataset(dataset, resolution, seed=config.seed, limit=limit)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(arch)
    started = time.perf_counter()
    report = train(model, data, config, evaluate_test=True)
    params, macs = count_cost(arch, model)
    result = {"arch_hash": arch.content_hash(), "seed": config.seed, "epochs": config.epochs,
              "status": report.status, "reason": report.reason, "test_accuracy": report.test_accuracy,
              "val_accuracy": report.val_accuracy, "val_accuracy_per_epoch": report.val_accuracy_per_epoch,
              "train_loss": report.train_loss, "params": params, "macs": macs, "train_images": len(data.train),
              "wall_s": time.perf_counter() - started, "threads": torch.get_num_threads(),
              "device": str(resolve_device(config.device))}
    cache.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return {**result, "cached": False}
