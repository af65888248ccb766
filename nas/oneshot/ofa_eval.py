"""Accuracy of a sub-network with weights inherited from an elastic supernet.

The shared BatchNorms hold statistics mixed over every sub-network trained, which fit none of
them; Once-for-All (Cai et al., ICLR 2020, Sec. 3.4) therefore re-computes each sub-network's BN
statistics on a few training images before measuring it. `subnet_accuracy` extracts the
sub-network as a plain model, re-calibrates its BN on `calibration_images` training images,
and measures top-1 on the val split; results are cached in a JSON file keyed by the
architecture's hash and the supernet's epoch (a newer supernet makes older entries stale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.training.data import DataSplits
from nas.training.device import module_device, resolve_device
from nas.training.train import evaluate
from search_spaces.atomic_files import write_atomically
from search_spaces.build import build_model
from search_spaces.errors import InputFileError
from search_spaces.spec import ArchSpec

__all__ = ["calibrated_model", "extract_model", "read_cache", "recalibrate_bn", "subnet_accuracy"]

CALIBRATION_SEED = 0  # the same images for every sub-network: accuracies stay comparable


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: Tensor, batch_size: int = 64) -> None:
    """Replace every BatchNorm's running statistics by their exact averages over `images`
    (cumulative averaging, momentum None, over batches of `batch_size`); nothing else changes
    and the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    device = module_device(model)
    model.train()
    try:
        for batch in images.split(batch_size):
            model(batch.to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()


def extract_model(supernet: ElasticSupernet, arch: ArchSpec) -> nn.Module:
    """`build_model(arch)` with the supernet's weights, in eval mode, on the CPU."""
    model = build_model(arch)
    model.load_state_dict(supernet.extract(arch))
    return model.eval()


def calibrated_model(supernet: ElasticSupernet, arch: ArchSpec, data: DataSplits, *, calibration_images: int = 512,
                     device: str = "auto") -> nn.Module:
    """`arch` as a plain model with the supernet's weights and BN statistics re-computed on
    `calibration_images` training images (the same images for every sub-network), on `device`."""
    supernet.covers(arch)
    model = extract_model(supernet, arch).to(resolve_device(device))
    images = torch.cat(data.calibration_batches(CALIBRATION_SEED, calibration_images, 256))
    recalibrate_bn(model, images)
    return model


def read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputFileError(f"{path}: unreadable accuracy cache ({error}); delete it to start over") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: an accuracy cache must be a JSON object keyed by arch hash")
    return data


def subnet_accuracy(supernet: ElasticSupernet, arch: ArchSpec, data: DataSplits, *, calibration_images: int = 512,
                    cache: Path | None = None, epoch: int | None = None, device: str = "auto",
                    batch_size: int = 256) -> float:
    """Val top-1 of `arch` with inherited weights after BN re-calibration on training images.

    `epoch` identifies the supernet's weights in the cache (default: `supernet.epoch` when the
    trainer set it, else 0); a cached entry of another epoch is recomputed."""
    supernet.covers(arch)
    epoch = int(getattr(supernet, "epoch", 0) if epoch is None else epoch)
    key = arch.content_hash()
    entries = read_cache(cache) if cache is not None else {}
    hit = entries.get(key)
    if isinstance(hit, dict) and hit.get("epoch") == epoch and isinstance(hit.get("accuracy"), (int, float)):
        return float(hit["accuracy"])
    model = calibrated_model(supernet, arch, data, calibration_images=calibration_images, device=device)
    accuracy = evaluate(model, data.val, batch_size=batch_size, device=device)
    if cache is not None:
        entries = read_cache(cache)  # re-read: another evaluation may have added entries meanwhile
        entries[key] = {"arch": arch.to_dict(), "accuracy": accuracy, "epoch": epoch}
        write_atomically(cache, json.dumps(entries, indent=1, sort_keys=True))
    return accuracy
