"""Validation of our zero-cost proxies on NAS-Bench-201 (issue #13, step 4).

For a seeded sample of NB201 cells from the shared zero-cost table (`nb201/nb201_zc.csv`: the 9,445
cells whose every op connects input to output, NAS-Bench-Suite-Zero's scores), each proxy is
computed by `predictors.proxies` on the real network (`build_model`), PyTorch default init and one
mini-batch of 64 CIFAR-10 training images (the protocol of the published scores), on 1 CPU thread.
Reported per proxy: Spearman between our score and the published score of the same proxy,
Spearman of ours and of the published one with CIFAR-10 test accuracy (200 epochs, `nb201.csv`),
on the same cells, and our compute time per cell.

Resumable: every (cell, proxy, seed, init, batch) score is appended to a JSONL cache in the work
directory (not the repository), so an interrupted run continues where it stopped. Phases: synflow
on every sampled cell first, then the issue's four data-dependent proxies (a batch-64 pass each) cell
by cell, then the params and MAC counts, then fisher and zen, until the time budget runs out (then
the figures cover the cells done, and the section's table says how many).

    python -m bench.proxies --cells 1000 --budget-min 40              # measure, then publish
    python -m bench.proxies --cells 20 --no-write                     # cost estimate only
    python -m bench.proxies --report-only                             # publish from the cache
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import fmt, md_table, publish, results_path
from nas.commands.proxies import dataset_batch
from predictors.proxies import BATCH_SIZE, PROXIES, parse_proxy_names, score_model
from search_spaces.build import build_model
from search_spaces.spaces import get_space

logger = logging.getLogger("bench.proxies")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HWNAS_SHARED_DATA", REPO.parent / "shared" / "data"))
# run in this order, each phase over every sampled cell before the next, until the budget is spent
PHASES = (("synflow",),  # well under a second a cell
          ("nwot", "jacov", "snip", "grad_norm"),  # a batch-64 pass each; the proxies the issue names
          ("params", "macs"),  # counts: equal to the table by construction (tests/test_nb201.py, test_proxies.py)
          ("fisher", "zen"))  # a batch-64 pass (two for zen) each; extras
# published proxy columns (nb201_zc.csv) for each of ours; params/macs compare to nb201.csv's
PUBLISHED_ZC = {name: f"zc_cifar10_{name}" for name in ("synflow", "jacov", "nwot", "snip", "grad_norm", "fisher", "zen")}
INIT = "torch"  # PyTorch default init, as the published scores
SENTINEL = -1e8  # NAS-Bench-Suite-Zero's value for a NaN/inf score
# Spearman with CIFAR-10 test accuracy of the published proxies over all 9,445 cells (issue #13)
ISSUE_FIGURES = {"nwot": 0.81, "jacov": 0.80, "params": 0.80, "synflow": 0.78, "snip": 0.60}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--cells", type=int, default=1000, help="Cells sampled (seeded) from nb201_zc.csv.")
    add("--sample-seed", type=int, default=0)
    add("--seed", type=int, default=0, help="Proxy seed: init and mini-batch.")
    add("--proxies", default=",".join(sum(PHASES, ())))
    add("--budget-min", type=float, default=40.0, help="Stop computing after this many minutes (cache kept).")
    add("--work-dir", type=Path, default=Path(os.environ.get("HWNAS_WORK", "/tmp/hwnas-bench-proxies")))
    add("--data", type=Path, default=SHARED / "cifar10_subset.npz", help="CIFAR-10 .npz (the mini-batch).")
    add("--shared", type=Path, default=SHARED, help="Folder holding nb201/nb201.csv and nb201/nb201_zc.csv.")
    add("--threads", type=int, default=1)
    add("--report-only", action="store_true", help="Publish from the cache, compute nothing.")
    add("--no-write", action="store_true", help="Print the figures; leave BENCHMARKS.md alone.")
    return parser.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def sample_cells(shared: Path, cells: int, seed: int) -> list[dict[str, Any]]:
    """`cells` rows of nb201_zc.csv (seeded, without replacement), joined with nb201.csv on index."""
    zc = read_csv(shared / "nb201" / "nb201_zc.csv")
    table = {row["index"]: row for row in read_csv(shared / "nb201" / "nb201.csv")}
    chosen = np.random.default_rng(seed).choice(len(zc), size=min(cells, len(zc)), replace=False)
    rows = []
    for position in chosen:
        row = zc[int(position)]
        full = table[row["index"]]
        assert full["arch"] == row["arch"], row["index"]
        rows.append({"index": int(row["index"]), "arch": row["arch"], "acc": float(full["cifar10_test_acc"]),
                     "published": {name: float(row[column]) for name, column in PUBLISHED_ZC.items()}
                     | {"params": float(full["params_cifar10"]) * 1e6, "macs": float(full["flops_cifar10"]) * 1e6}})
    return rows


class Cache:
    """Append-only JSONL of computed scores keyed by (arch, proxy, seed, init, batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption
                    continue
                self.entries[self.key(entry)] = entry

    @staticmethod
    def key(entry: dict[str, Any]) -> tuple:
        return (entry["arch"], entry["proxy"], entry["seed"], entry["init"], entry["batch"])

    def get(self, arch: str, proxy: str, seed: int) -> dict[str, Any] | None:
        return self.entries.get((arch, proxy, seed, INIT, BATCH_SIZE))

    def add(self, entry: dict[str, Any]) -> None:
        self.entries[self.key(entry)] = entry
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


# -- computing ------------------------------------------------------------------------------------

def compute(args: argparse.Namespace, cells: list[dict[str, Any]], names: list[str], cache: Cache) -> None:
    batch = dataset_batch(f"cifar10:{args.data}", 32, size=BATCH_SIZE, seed=args.seed)
    space = get_space("nb201", resolution=32, num_classes=10)
    deadline = time.monotonic() + 60 * args.budget_min
    phases = [[name for name in phase if name in names] for phase in PHASES]
    phases.append([name for name in names if not any(name in phase for phase in PHASES)])
    for phase in filter(None, phases):
        for number, cell in enumerate(cells, 1):
            todo = [name for name in phase if cache.get(cell["arch"], name, args.seed) is None]
            if not todo:
                continue
            if time.monotonic() > deadline:
                logger.info("time budget spent at cell %d of %d (%s)", number, len(cells), ",".join(phase))
                return
            model = build_model(space.from_arch_string(cell["arch"]))
            for name, score in score_model(model, todo, batch, seed=args.seed, init=INIT).items():
                cache.add({"arch": cell["arch"], "index": cell["index"], "proxy": name, "seed": args.seed,
                           "init": INIT, "batch": len(batch.inputs), "value": score.value,
                           "seconds": score.seconds})
            if number % 25 == 0:
                logger.info("%s: %d / %d cells", ",".join(phase), number, len(cells))


# -- figures ---------------------------------------------------------------------------------------

def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return None if value is None or math.isnan(value) else float(value)


def figures(cells: list[dict[str, Any]], names: list[str], cache: Cache, seed: int) -> dict[str, Any]:
    rows = {}
    for name in names:
        ours, published, accuracy, seconds, dropped = [], [], [], [], 0
        for cell in cells:
            entry = cache.get(cell["arch"], name, seed)
            if entry is None:
                continue
            seconds.append(entry["seconds"])
            value, reference = entry["value"], cell["published"][name]
            if not math.isfinite(value) or reference == SENTINEL:
                dropped += 1  # NaN/inf here or in the published data: no rank
                continue
            ours.append(value)
            published.append(reference)
            accuracy.append(cell["acc"])
        exact = [abs(o - p) <= 1e-6 * max(1.0, abs(p)) for o, p in zip(ours, published)]
        rows[name] = {
            "cells": len(seconds), "ranked": len(ours), "dropped_non_finite": dropped,
            "needs_data": PROXIES.get(name).needs_data,
            "spearman_vs_published": spearman(ours, published),
            "spearman_ours_vs_acc": spearman(ours, accuracy),
            "spearman_published_vs_acc": spearman(published, accuracy),
            "issue_published_vs_acc_all": ISSUE_FIGURES.get(name),
            "exact_equal": sum(exact) if name in ("params", "macs") else None,
            "median_relative_gap": (statistics.median(abs(o - p) / abs(p) for o, p in zip(ours, published) if p)
                                    if ours else None),
            "seconds_median": statistics.median(seconds) if seconds else None,
            "seconds_mean": statistics.fmean(seconds) if seconds else None,
        }
    return rows


def section(rows: dict[str, Any], args: argparse.Namespace, sampled: int) -> str:
    lines = [
        f"Our zero-cost proxies (`predictors/proxies/`) against NAS-Bench-Suite-Zero's published scores "
        f"of the same proxy (shared `nb201/nb201_zc.csv`, CIFAR-10) on a seeded sample of {sampled} of its "
        f"9,445 cells (sample seed {args.sample_seed}), and against 200-epoch CIFAR-10 test accuracy "
        f"(`nb201.csv`). Protocol of the published scores: the real NB201 network, PyTorch default init "
        f"(proxy seed {args.seed}), train-mode BN, one batch of 64 CIFAR-10 training images "
        f"(`cifar10_subset.npz` as `nas proxies --dataset cifar10:PATH` reads it: normalised by the train split's mean and std, no augmentation), 1 CPU thread. `params`/`macs` are compared "
        f"with the table's params and FLOPs (FLOPs = our MACs + 10 classifier bias adds). Cells: scored by us "
        f"(proxies in phase order — synflow; nwot, jacov, snip, grad_norm; params, macs; fisher, zen — until "
        f"each run's time budget was spent, so the later ones on fewer cells); "
        f"ranked: both scores finite. ρ pub·acc (same cells) is the published proxy on the same cells; "
        f"ρ pub·acc (9,445) is the issue's figure. The figures are read from the resumable cache of "
        f"(cell, proxy, seed) scores, which runs of this command on the same sample fill in turn (the command "
        f"above is the last; timings are each score's own, under the machine's load at the time).",
    ]
    header = ["proxy", "data", "cells", "ranked", "ρ ours·published", "ρ ours·acc", "ρ pub·acc (same cells)",
              "ρ pub·acc (9,445)", "median |Δ|/pub", "s / cell (median)"]
    table = []
    for name, row in rows.items():
        if not row["cells"]:
            continue
        table.append([f"`{name}`", "yes" if row["needs_data"] else "no", str(row["cells"]), str(row["ranked"]),
                      fmt(row["spearman_vs_published"]), fmt(row["spearman_ours_vs_acc"]),
                      fmt(row["spearman_published_vs_acc"]), fmt(row["issue_published_vs_acc_all"], ".2f"),
                      fmt(row["median_relative_gap"], ".2%"), fmt(row["seconds_median"], ".2f")])
    lines += md_table(header, table)
    lines += ["", f"Raw figures: `{results_path('proxies')}`; per-cell scores stay in the work directory's "
              "cache (`scores.jsonl`)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    names = parse_proxy_names(args.proxies)
    cells = sample_cells(args.shared, args.cells, args.sample_seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cache = Cache(args.work_dir / "scores.jsonl")
    if not args.report_only:
        compute(args, cells, names, cache)
    # the figures cover every proxy the cache holds for this sample and seed, whichever run scored it
    reported = [name for name in sum(PHASES, ()) if name in PROXIES] + [name for name in PROXIES.names()
                                                                         if name not in sum(PHASES, ())]
    rows = figures(cells, reported, cache, args.seed)
    print(json.dumps(rows, indent=1))
    if not args.no_write:
        publish("proxies", "Zero-cost proxies on NAS-Bench-201: ours vs published",
                section(rows, args, len(cells)),
                {"settings": {k: str(v) for k, v in vars(args).items()}, "proxies": rows})


if __name__ == "__main__":
    main()
