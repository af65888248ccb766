"""How well per-op latency tables predict whole networks on this machine.

For each (space, backend): build the table (time, entries), measure 50 sampled architectures end
to end with the same protocol, and report raw and calibrated (out-of-fold) fidelity, plus how many
predictions per second the table answers. Writes its section of BENCHMARKS.md and the scatter PNGs.

    python -m bench.latency_fidelity                       # mnasnet@32 and proxyless@224, both backends
    python -m bench.latency_fidelity --spaces proxyless:32 --backends onnxruntime --samples 20
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import md_table, publish, results_path
from predictors import cost
from predictors.latency import LatencyTable, LocalMeasurer, build_table, validate_table
from predictors.latency.lut import arch_layers
from search_spaces.build import layer_signature
from search_spaces.spaces import get_space


def lookups_per_second(table: LatencyTable, space, n: int = 10_000) -> tuple[float, float]:
    """(cold, warm) predictions per second over n distinct sampled architectures. Cold: first
    query of each architecture (signatures computed); warm: the same architectures again, as a
    search re-queries them (signatures cached)."""
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(n)]
    for cached in (arch_layers, layer_signature, cost._weights):  # cold means cold, whichever table came first
        cached.cache_clear()
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        for arch in archs:
            table.predict(arch)
        rates.append(n / (time.perf_counter() - start))
    return rates[0], rates[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["mnasnet:32", "proxyless:224"], help="NAME:RESOLUTION")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/latency"))
    parser.add_argument("--pairs", nargs="+", help="NAME:RESOLUTION:BACKEND combinations (instead of spaces x backends).")
    parser.add_argument("--resume", action="store_true",
                        help="Keep tables already on disk and measure only what they lack (build time is then partial).")
    parser.add_argument("--no-write", action="store_true", help="Print only: do not touch BENCHMARKS.md or bench/results/.")
    return parser.parse_args(argv)


def measure_pair(args: argparse.Namespace, name: str, resolution: int, backend: str) -> dict[str, Any]:
    """Build one table (timed), validate it on `args.samples` networks (timed), time its lookups."""
    space = get_space(name, resolution=resolution, num_classes=10 if resolution <= 64 else 1000)
    path = args.out / f"{name}_r{resolution}_{backend}_t{args.threads}.json"
    resumed = args.resume and path.exists()
    if not args.resume:
        path.unlink(missing_ok=True)
    measurer = LocalMeasurer(backend, threads=args.threads)
    start = time.perf_counter()
    table = build_table(space, measurer, path, show_progress=sys.stderr.isatty())
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    report = validate_table(table, space, measurer, samples=args.samples, seed=0, plot_path=path.with_suffix(".png"))
    validate_s = time.perf_counter() - start
    table.save(path)
    cold, warm = lookups_per_second(table, space)
    row = {"space": name, "resolution": resolution, "backend": backend, "entries": len(table), "build_s": build_s,
           "resumed": resumed, "validate_s": validate_s, "lookups_cold": cold, "lookups_warm": warm,
           "median_ms": float(np.median(report.measured_ms)), "validation": table.validation}
    print(f"{name}@{resolution} {backend}: {len(table)} entries in {build_s:.0f}s; raw within10 "
          f"{report.raw.within_10pct:.0%} tau {report.raw.kendall_tau:.3f}; calibrated within10 "
          f"{report.calibrated.within_10pct:.0%} tau {report.calibrated.kendall_tau:.3f}; "
          f"{cold:,.0f}/{warm:,.0f} lookups/s", flush=True)
    return row


def _fidelity_table(rows: list[dict[str, Any]]) -> list[str]:
    table = []
    for row in rows:
        build = f"{row['build_s']:.0f} s" + (" (resumed: last part only)" if row["resumed"] else "")
        for label, key in (("raw sum", "raw"), ("calibrated", "calibrated_out_of_fold")):
            figures = row["validation"][key]
            table.append([f"{row['space']} @ {row['resolution']}", row["backend"], str(row["entries"]), build,
                          f"{row['median_ms']:.3f} ms", label, f"{100 * figures['within_10pct']:.0f}%",
                          f"{figures['kendall_tau']:.3f}", f"{100 * figures['mape']:.1f}%", f"{figures['rmse_ms']:.3f} ms"])
    return md_table(["space @ px", "backend", "entries", "build", "median arch", "prediction", "within ±10%",
                     "Kendall tau", "MAPE", "RMSE"], table)


def _calibration_table(rows: list[dict[str, Any]]) -> list[str]:
    return md_table(["space @ px", "backend", "slope", "ms per M weights", "intercept", "lookups/s cold",
                     "lookups/s warm", "validation time"],
                    [[f"{row['space']} @ {row['resolution']}", row["backend"], f"{cal['slope']:.3f}",
                      f"{cal['ms_per_mweight']:.4f}", f"{cal['intercept_ms']:+.4f} ms", f"{row['lookups_cold']:,.0f}",
                      f"{row['lookups_warm']:,.0f}", f"{row['validate_s']:.0f} s"]
                     for row in rows for cal in [row["validation"]["calibration"]]])


def render(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Each table is built from scratch on 1 thread (`--threads {args.threads}`), batch 1, with the protocol of "
        "`predictors/latency/measure.py` (10 warm-up runs, 15 interleaved blocks of 10 runs, median of blocks, "
        f"re-measured when p10-p90 spread > 20%). Then {args.samples} distinct architectures sampled with seed 0 are "
        "measured end to end with the same protocol, all in one interleaved call. *Raw* = sum of table entries; "
        "*calibrated* = `slope * sum + ms_per_mweight * weights/1e6 + intercept` (weights: conv and linear weight "
        "count; see `predictors/latency/validate.py`) fitted by least squares with non-negative coefficients, "
        "scored out-of-fold (5-fold), so the figure is not flattered by fitting and scoring on the same points. mnasnet and proxyless at 32 px use the "
        "small-input strides (CIFAR/digits setting, 10 classes); at 224 px the ImageNet setting (1000 classes).",
        *_fidelity_table(rows),
        "", "Calibration fitted on all samples (stored in the table) and lookup speed "
        "(10,000 distinct sampled architectures; cold = first query, warm = repeated query):",
        *_calibration_table(rows),
        "", f"Scatter plots: `{args.out}/*.png` (not committed; re-run the command to regenerate). "
        f"Raw numbers: `{results_path('latency_fidelity')}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = [p.rsplit(":", 1) for p in args.pairs] if args.pairs else [
        (item, backend) for item in args.spaces for backend in args.backends]
    rows = [measure_pair(args, item.split(":")[0], int(item.split(":")[1]), backend) for item, backend in pairs]
    body = render(args, rows)
    if not args.no_write:
        publish("latency_fidelity", "Latency tables: fidelity, build time, lookup speed", body, {"rows": rows})


if __name__ == "__main__":
    main()
