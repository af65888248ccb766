"""The ground truth the once-for-all benchmark ranks against: sub-networks of the space trained
from scratch, one result file per (arch hash, recipe, seed), so a killed run resumes and an extra
seed costs one training.

The networks are spread over the space's cost range: `count` picks at evenly spaced MACs
between the cheapest and the dearest of `pool` uniform samples (MACs follow latency closely
within one space; the measured latency of each is reported beside it), so Kendall's tau is
computed over the range budgets choose from, not over near-identical networks.

    python -m bench.ofa_standalone --smoke      # seconds: checks the script
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.training import TrainConfig, load_dataset, train
from predictors.cost_closed_form import macs_of_spec
from search_spaces import ArchSpec, build_model
from search_spaces.atomic_files import write_atomically
from search_spaces.spaces import get_space

logger = logging.getLogger("bench.ofa_standalone")


@dataclass(frozen=True)
class Setting:
    """What the ground truth was trained on; part of every cache key."""

    data: str = "cifar10:/work/shared/data/cifar10_subset.npz"
    resolution: int = 16
    width_mult: float = 0.5
    train_limit: int = 5000
    epochs: int = 3
    max_batches: int = 30
    batch_size: int = 64
    lr: float = 0.05
    label_smoothing: float = 0.1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def space(self) -> Any:
        return get_space("proxyless", resolution=self.resolution, num_classes=10, width_mult=self.width_mult)

    def data_splits(self, seed: int = 0) -> Any:
        return load_dataset(self.data, self.resolution, seed=seed, limit=self.train_limit)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed, device="cpu",
                           label_smoothing=self.label_smoothing, max_batches_per_epoch=self.max_batches)


def spread_archs(space: Any, count: int, pool: int = 2000, seed: int = 0) -> list[ArchSpec]:
    """`count` distinct networks nearest to evenly spaced MAC targets between the cheapest and the
    dearest of `pool` uniform samples (quantiles would crowd them in the middle of the range)."""
    rng = np.random.default_rng(seed)
    samples = [space.sample(rng) for _ in range(pool)]
    macs = np.array([macs_of_spec(arch) for arch in samples], dtype=float)
    picked: list[ArchSpec] = []
    for target in np.linspace(macs.min(), macs.max(), count):
        for index in np.argsort(np.abs(macs - target), kind="stable"):
            if all(samples[index] != other for other in picked):
                picked.append(samples[index])
                break
    return picked


def train_standalone(setting: Setting, arch: ArchSpec, seed: int, cache_dir: Path, data: Any) -> dict[str, Any]:
    """Train `arch` from scratch (cached) and return val/test accuracy and the wall time."""
    path = cache_dir / f"{arch.content_hash()[:16]}-{setting.key()}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.manual_seed(seed)
    model = build_model(arch)
    started = time.perf_counter()
    report = train(model, data, setting.train_config(seed), evaluate_test=True)
    result = {"arch": arch.to_dict(), "hash": arch.content_hash(), "seed": seed, "setting": asdict(setting),
              "val_accuracy": report.val_accuracy, "test_accuracy": report.test_accuracy,
              "macs": macs_of_spec(arch), "params": sum(p.numel() for p in model.parameters()),
              "train_s": round(time.perf_counter() - started, 1), "status": report.status,
              "threads": torch.get_num_threads()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(result, indent=1).encode())
    return result


def run(setting: Setting, count: int, noise_seeds: int, cache_dir: Path) -> dict[str, Any]:
    space = setting.space()
    archs = spread_archs(space, count)
    data = setting.data_splits()
    rows = []
    for index, arch in enumerate(archs):
        rows.append(train_standalone(setting, arch, 0, cache_dir, data))
        logger.info("standalone %d/%d: val %.4f (%s s)", index + 1, len(archs), rows[-1]["val_accuracy"],
                    rows[-1]["train_s"])
    middle = archs[len(archs) // 2]
    noise = [train_standalone(setting, middle, seed, cache_dir, data) for seed in range(noise_seeds)]
    return {"setting": asdict(setting), "rows": rows, "noise": noise}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--noise-seeds", type=int, default=3, help="Seeds of the middle network: the spread.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ofa"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    setting = Setting()
    if args.smoke:
        setting = Setting(data="digits", resolution=16, width_mult=0.5, train_limit=300, epochs=1, max_batches=2)
        args.count, args.noise_seeds = 3, 2
    result = run(setting, args.count, args.noise_seeds, args.out / "standalone")
    print(json.dumps([{k: r[k] for k in ("hash", "seed", "val_accuracy", "macs", "train_s")} for r in
                      result["rows"] + result["noise"]], indent=1))


if __name__ == "__main__":
    main()
