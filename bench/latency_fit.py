"""A latency model for a phone from few measurements (issue #17), on HW-NAS-Bench's FBNet-space data.

For each of the four whole-model phones (pixel2, samsung_a50, samsung_s7, essential_ph_1) held out
in turn: fit `predictors.latency.fit` on 10, 20 and 50 of its measured architectures, test on 1,000
others never used for fitting, 5 random draws; report within ±10% and Spearman on the test set, and
the cross-validated figure the model stored (what a user sees) beside it. Two source sets: all
seven other devices (the four HW-NAS-Bench per-op tables and the other three phones' tables fitted
on their own measurements), and the other three phones only. The baseline is the issue's: a
per-(layer, op) additive model with an intercept, least squares on 4,000 architectures of the
phone itself, tested on the other 1,000. Also the zoo's FBNet-A/B/C and ShuffleNet V1 against the
papers' tables.

    python -m bench.latency_fit                      # needs ../shared/data (or $HWNAS_SHARED_DATA)
    python -m bench.latency_fit --draws 2 --sizes 20 --no-publish
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import md_table, pct, publish, results_path
from predictors.cost import count
from predictors.latency.fit import figures, fit_latency_model
from predictors.latency.hwnasbench import (
    ADDITIVE_DEVICES,
    DATA_RELATIVE,
    DEVICES,
    MEASURED_DEVICES,
    fit_additive_entries,
    read_hwnasbench,
)
from predictors.latency.lut import LatencyTable
from predictors.latency.measure import Measurement
from search_spaces import zoo

REPO = Path(__file__).resolve().parents[1]
BASELINE_ISSUE = {"pixel2": 0.69, "samsung_a50": 0.89, "samsung_s7": 0.63, "essential_ph_1": 0.54}
ZOO = ("fbnet_a", "fbnet_b", "fbnet_c", "shufflenet_v1_g3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shared = Path(os.environ.get("HWNAS_SHARED_DATA", REPO.parent / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared / DATA_RELATIVE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--targets", nargs="+", default=list(MEASURED_DEVICES))
    parser.add_argument("--no-publish", action="store_true")
    return parser.parse_args(argv)


def device_tables(data) -> dict[str, LatencyTable]:
    """Every device as a per-signature table: exact for the additive four, a fit for the phones."""
    tables = {}
    for device in DEVICES:
        entries = fit_additive_entries(data.space, data.archs, data.device(device))
        tables[device] = LatencyTable({"device": device}, {k: Measurement(max(0.0, v), max(0.0, v), max(0.0, v), 1)
                                                           for k, v in entries.items()},
                                      space="fbnet", resolution=32, num_classes=100)
    return tables


def issue_baseline(data, device: str, seed: int = 0) -> dict[str, float]:
    """Per-(layer, op) one-hot + intercept, least squares on 4,000, tested on the other 1,000."""
    vectors, y = data.vectors, data.device(device)
    x = np.zeros((len(y), vectors.shape[1] * 9 + 1))
    x[:, -1] = 1
    for layer in range(vectors.shape[1]):
        x[np.arange(len(y)), layer * 9 + vectors[:, layer]] = 1
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:4000], order[4000:]
    theta, *_ = np.linalg.lstsq(x[train], y[train], rcond=None)
    return figures(x[test] @ theta, y[test])


def draw_split(data, n: int, test: int, seed: int) -> tuple[list[int], list[int]]:
    """n training archs (one per network) and `test` others, disjoint."""
    order = np.random.default_rng(seed).permutation(len(data.archs)).tolist()
    train, networks = [], set()
    for index in order:
        if data.archs[index] not in networks:
            networks.add(data.archs[index])
            train.append(index)
        if len(train) == n:
            break
    rest = [i for i in order if i not in set(train) and data.archs[i] not in networks]
    return train, rest[:test]


def run_target(data, tables, target: str, sources: list[str], args) -> list[dict[str, Any]]:
    rows, y = [], data.device(target)
    for n in args.sizes:
        for draw in range(args.draws):
            train, test = draw_split(data, n, args.test, seed=draw)
            model = fit_latency_model(data.space, [data.archs[i] for i in train], y[train],
                                      [(name, tables[name]) for name in sources], seed=draw)
            predicted = np.array([model.predict(data.archs[i]) for i in test])
            result = figures(predicted, y[test])
            rows.append({"target": target, "n": n, "draw": draw, "sources": sources, "test": result,
                         "cv": model.cross_validation, "lambda": model.fit["lambda"]})
            print(f"{target} n={n} draw={draw}: within10 {result['within_10pct']:.3f} spearman "
                  f"{result['spearman']:.3f} (cv {model.cross_validation['within_10pct']:.2f}, "
                  f"lambda {model.fit['lambda']})", flush=True)
    return rows


def zoo_rows() -> list[dict[str, Any]]:
    out = []
    for name in ZOO:
        cost, published = count(zoo.get(name)), zoo.PUBLISHED[name]
        out.append({"name": name, "params": cost.params, "macs": cost.macs, "paper_params": published.params,
                    "paper_macs": published.macs, "source": published.source})
    return out


def summary(rows: list[dict[str, Any]], target: str, n: int, setting: str) -> dict[str, float]:
    chosen = [r for r in rows if r["target"] == target and r["n"] == n and r["setting"] == setting]
    within = [r["test"]["within_10pct"] for r in chosen]
    return {"within_mean": float(np.mean(within)), "within_min": float(np.min(within)),
            "within_max": float(np.max(within)), "spearman": float(np.mean([r["test"]["spearman"] for r in chosen])),
            "cv_within": float(np.mean([r["cv"]["within_10pct"] for r in chosen]))}


def render(args, rows, baselines, zoo_figures, seconds) -> str:
    lines = [
        "HW-NAS-Bench's FBNet space (CIFAR-100 setting, 32 px), 5,000 architectures with whole-model "
        "latencies on four phones (integer ms, noisy). Each phone held out in turn: the model "
        "(`nas latency fit`: affine map of the equal-weight mix of the source tables + a per-layer-signature "
        "ridge correction, its penalty chosen by cross-validation) is fitted on n measured architectures "
        f"and tested on {args.test} others never used for fitting; {args.draws} random draws (mean, and "
        "min-max over draws, of within ±10%). *all 7*: the four HW-NAS-Bench per-op tables and the other "
        "three phones' tables (least-squares per-signature fits to their own 5,000 measurements); "
        "*3 phones*: the other three phones' tables only. *CV*: the cross-validated within ±10% the model "
        "stores (mean over draws). Baseline: per-(layer, op) additive model + intercept, least squares on "
        "4,000 of the phone's own architectures, tested on the other 1,000 (issue's figure in brackets).",
    ]
    table = []
    for target in args.targets:
        for n in args.sizes:
            cells = [target, str(n)]
            for setting in ("all 7", "3 phones"):
                s = summary(rows, target, n, setting)
                cells += [f"{pct(s['within_mean'])} ({100 * s['within_min']:.0f}-{100 * s['within_max']:.0f})",
                          f"{s['spearman']:.2f}", pct(s["cv_within"])]
            base = baselines[target]
            cells += [f"{pct(base['within_10pct'])} [{100 * BASELINE_ISSUE[target]:.0f}%], "
                      f"ρ {base['spearman']:.2f}"]
            table.append(cells)
    lines += md_table(["phone", "n", "all 7: within ±10%", "Spearman", "CV", "3 phones: within ±10%", "Spearman",
                       "CV", "baseline (4,000)"], table)
    verdict = []
    for setting in ("all 7", "3 phones"):
        if 20 not in args.sizes:
            break
        met = [t for t in args.targets if summary(rows, t, 20, setting)["within_mean"] >= baselines[t]["within_10pct"]]
        verdict.append(f"*{setting}*, 20 measurements: at or above the 4,000-sample baseline on {len(met)} of "
                       f"{len(args.targets)} phones ({', '.join(met) or 'none'}).")
    lines += ["", " ".join(verdict)]
    gaps = [abs(r["cv"]["within_10pct"] - r["test"]["within_10pct"]) for r in rows if r["n"] <= 20]
    lines += ["", "Notes. The *3 phones* source set was chosen after an exploratory pass on this same data "
              "(an affine map of each single source fitted on 20 architectures: the other phones' fitted tables "
              "came closer to a held-out phone than HW-NAS-Bench's per-op tables); it is the same rule for every "
              "target, not tuned per phone, but it was not chosen blind. Also tried in that pass and dropped: a "
              "ridge over one coefficient per source, and picking one source by cross-validation (both worse "
              "at 10-20 measurements). The stored cross-validated within ±10% is a rough guide at these sizes: "
              f"it differs from the 1,000-architecture test figure by {100 * float(np.mean(gaps)):.0f} points on "
              f"average (up to {100 * float(np.max(gaps)):.0f}) at n <= 20. Not measured here: a "
              "latency-constrained search with a phone's model as budget (the search still opens `--lut` "
              "as a table; see ARCHITECTURE.md, Known gaps)."]
    zoo_table = [[r["name"], f"{r['params']:,}", f"{r['paper_params'] / 1e6:.2f}M",
                  f"{100 * (r['params'] / r['paper_params'] - 1):+.1f}%", f"{r['macs'] / 1e6:.1f}M",
                  f"{r['paper_macs'] / 1e6:.0f}M", f"{100 * (r['macs'] / r['paper_macs'] - 1):+.1f}%", r["source"]]
                 for r in zoo_figures]
    lines += ["", "Zoo at 224 px, 1,000 classes, against the papers (MACs: conv + linear multiply-adds):"]
    lines += md_table(["model", "params", "paper", "diff", "MACs", "paper", "diff", "source"], zoo_table)
    lines += ["", f"Wall time {seconds / 60:.1f} min. Raw figures per draw: `{results_path('latency_fit')}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"needs HW-NAS-Bench's FBNet latencies at {args.data} (--data or HWNAS_SHARED_DATA)")
    start = time.time()
    data = read_hwnasbench(args.data)
    tables = device_tables(data)
    print(f"tables ready in {time.time() - start:.0f} s", flush=True)
    rows = []
    for target in args.targets:
        others = [d for d in DEVICES if d != target]
        for setting, sources in (("all 7", others), ("3 phones", [d for d in others if d not in ADDITIVE_DEVICES])):
            rows += [{**row, "setting": setting} for row in run_target(data, tables, target, sources, args)]
    baselines = {target: issue_baseline(data, target) for target in args.targets}
    zoo_figures = zoo_rows()
    body = render(args, rows, baselines, zoo_figures, time.time() - start)
    print(body)
    if not args.no_publish:
        publish("latency_fit", "A latency model for a new phone from few measurements (FBNet space, HW-NAS-Bench)",
                body, {"rows": rows, "baselines": baselines, "zoo": zoo_figures, "args": vars(args)})


if __name__ == "__main__":
    main()
