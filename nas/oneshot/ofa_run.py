"""From a trained elastic supernet to a specialised model on disk: the steps `nas supernet
specialize` and the `once-for-all` strategy share.

1. `run_predictor`: the accuracy predictor of a supernet's checkpoint directory, fitted once per
   supernet epoch. It samples sub-networks (the largest and the smallest first, then distinct
   random ones), measures each with `subnet_accuracy` (BN re-calibrated, cached by arch hash and
   epoch in `accuracy_cache.json`, so a killed run loses at most one evaluation), fits
   `AccuracyPredictor` and saves it as `predictor.json` + `predictor.safetensors` next to the
   checkpoint. A later call for the same epoch with no more samples asked reads it back: the
   next budget costs the specialisation alone.
2. `specialize_supernet`: `specialize` restricted to the networks the supernet covers, with the
   supernet's smallest network as the floor a budget must clear.
3. `inherited_model`: the chosen network with the supernet's weights, BN re-calibrated on the
   same training images `subnet_accuracy` uses, and its val accuracy.
4. `write_specialized`: arch.json + weights.safetensors (`nas.rundir.model_files.save`, with
   integrity metadata, so `nas load DIR` reads it) and metrics.json.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_eval import CALIBRATION_SEED, extract_model, recalibrate_bn, subnet_accuracy
from nas.oneshot.ofa_predictor import AccuracyPredictor, PredictorConfig, PredictorFileError
from nas.oneshot.ofa_specialize import EvolutionSettings, Specialization, specialize
from nas.rundir.atomic import json_safe, write_atomically
from nas.rundir.model_files import ARCH_FILE, WEIGHTS_FILE, save
from nas.training.data import DataSplits
from nas.training.device import resolve_device
from nas.training.train import evaluate
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["ACCURACY_CACHE", "METRICS_FILE", "PREDICTOR_STEM", "check_out_dir", "covers_of", "inherited_model",
           "run_predictor", "sample_archs", "specialize_supernet", "write_specialized"]

logger = logging.getLogger(__name__)

PREDICTOR_STEM = "predictor"
ACCURACY_CACHE = "accuracy_cache.json"  # shared with `nas supernet evaluate`
METRICS_FILE = "metrics.json"
OUTPUT_FILES = (ARCH_FILE, WEIGHTS_FILE, METRICS_FILE)


def covers_of(supernet: ElasticSupernet) -> Callable[[ArchSpec], bool]:
    """`supernet.covers` (which raises) as a yes/no test."""
    def covers(arch: ArchSpec) -> bool:
        try:
            supernet.covers(arch)
        except SupernetPlanError:
            return False
        return True
    return covers


def sample_archs(supernet: ElasticSupernet, count: int, seed: int) -> list[ArchSpec]:
    """`count` distinct sub-networks: the largest, the smallest, then seeded random draws, so
    the predictor sees both ends of the latency range."""
    if count < 2:
        raise OptionError(f"samples={count} must be >= 2 (the largest and the smallest sub-network at least)")
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    for arch in (supernet.largest(), supernet.smallest()):
        if arch.content_hash() not in seen:
            seen.add(arch.content_hash())
            archs.append(arch)
    for _ in range(count * 50):
        if len(archs) >= count:
            break
        arch = supernet.sample(rng)
        if arch.content_hash() not in seen:
            seen.add(arch.content_hash())
            archs.append(arch)
    return archs


def run_predictor(supernet: ElasticSupernet, data: DataSplits, directory: Path, *, samples: int, seed: int = 0,
                  config: PredictorConfig | None = None, calibration_images: int = 512, device: str = "auto",
                  progress: bool = False) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """The predictor saved in `directory` for this supernet epoch, or a new one fitted on
    `samples` evaluated sub-networks (and saved there). Also returns what it cost."""
    directory = Path(directory)
    epoch = int(getattr(supernet, "epoch", 0))
    stem = directory / PREDICTOR_STEM
    if stem.with_suffix(".json").is_file():
        try:
            saved = AccuracyPredictor.load(stem, supernet.space)
        except PredictorFileError as error:
            logger.warning("%s; fitting a new predictor", error)
        else:
            if saved.provenance.get("supernet_epoch") == epoch and saved.samples >= samples:
                return saved, {"reused": True, "samples": saved.samples, "rmse": saved.rmse}
            logger.info("predictor in %s is for epoch %s with %d samples; refitting for epoch %d with %d",
                        directory, saved.provenance.get("supernet_epoch"), saved.samples, epoch, samples)
    archs = sample_archs(supernet, samples, seed)
    started = time.perf_counter()
    accuracies = []
    for index, arch in enumerate(archs, 1):
        accuracies.append(subnet_accuracy(supernet, arch, data, calibration_images=calibration_images,
                                          cache=directory / ACCURACY_CACHE, epoch=epoch, device=device))
        if progress and (index % 10 == 0 or index == len(archs)):
            logger.info("predictor: %d/%d sub-networks evaluated", index, len(archs))
    evaluated = time.perf_counter()
    predictor = AccuracyPredictor(supernet.space, config).fit(archs, accuracies, seed=seed)
    predictor.provenance = {"supernet_epoch": epoch, "calibration_images": calibration_images,
                            "accuracy_range": [min(accuracies), max(accuracies)]}
    predictor.save(stem)
    cost = {"reused": False, "samples": len(archs), "rmse": predictor.rmse,
            "evaluate_seconds": evaluated - started, "fit_seconds": time.perf_counter() - evaluated}
    logger.info("predictor: %d samples, accuracy %.4f..%.4f, k-fold RMSE %.4f", len(archs), min(accuracies),
                max(accuracies), predictor.rmse if predictor.rmse is not None else float("nan"))
    return predictor, cost


def specialize_supernet(supernet: ElasticSupernet, predictor: AccuracyPredictor, latency: Any, budget_ms: float,
                        settings: EvolutionSettings | None = None, *, seed: int = 0) -> Specialization:
    return specialize(predictor, latency, budget_ms, settings, seed=seed, covers=covers_of(supernet),
                      smallest=supernet.smallest())


def inherited_model(supernet: ElasticSupernet, arch: ArchSpec, data: DataSplits, *, calibration_images: int = 512,
                    device: str = "auto", batch_size: int = 256) -> tuple[nn.Module, float]:
    """`arch` with the supernet's weights, BN re-calibrated (the images `subnet_accuracy` uses),
    on the CPU in eval mode, and its val accuracy."""
    model = extract_model(supernet, arch)
    images = torch.cat(data.calibration_batches(CALIBRATION_SEED, calibration_images, batch_size))
    model.to(resolve_device(device))
    recalibrate_bn(model, images)
    accuracy = evaluate(model, data.val, batch_size=batch_size, device=device)
    return model.cpu().eval(), accuracy


def check_out_dir(out: Path, protected: Path) -> Path:
    """`out` may be new, empty, or a previous specialisation's directory (only our three files):
    never a file, never inside `protected` (the supernet's checkpoint), never a directory
    holding anything else (that would be clobbered)."""
    out = Path(out)
    resolved, guarded = out.resolve(), Path(protected).resolve()
    if resolved == guarded or guarded in resolved.parents or resolved in guarded.parents:
        raise OptionError(f"--out {out}: must lie outside the supernet's directory {protected} (it would overwrite "
                          "or mix with the checkpoint)")
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: is a file; give a directory")
    if out.is_dir():
        others = sorted(item.name for item in out.iterdir() if item.name not in OUTPUT_FILES)
        if others:
            raise OptionError(f"--out {out}: holds other files ({', '.join(others[:3])}); "
                              "give a new or empty directory")
    return out


def write_specialized(out: Path, model: nn.Module, arch: ArchSpec, metrics: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save(model, arch, out)
    write_atomically(out / METRICS_FILE, json.dumps(json_safe(metrics), indent=2) + "\n")
