"""ProxylessNAS on this machine: training-step memory of path binarization vs all paths, and
derived networks' latency vs their targets and accuracy next to regularized evolution.

1. Memory: one training step (forward + backward, same batch) per mode, each in a fresh
   subprocess: a plain network of the sampled path, the binarized weight step (1 path), the
   binarized architecture step (2 paths), and the DARTS-style all-paths step. Figures: the peak
   RSS of the step over the RSS before it (Linux: VmHWM reset through /proc/self/clear_refs just
   before the step), or CUDA's peak allocation on a GPU; plus the bytes autograd saved for backward
   (activations; parameters excluded), which no allocator can blur.
2. Search: the `proxyless` space (width `--width-mult`) on the CIFAR-10 subset, latency table built
   (and calibrated) with onnxruntime on 1 thread; three targets (quantiles of random networks'
   predicted latency). Per target: supernet search, argmax network, its predicted and measured
   (same backend and threads) latency, retraining from scratch (`nas.search.trial.retrain`, the one
   train loop) and test accuracy. Evolution (`nas.search.runner`, hard budget = the target) with the
   same final retraining sits next to it.

    python -m bench.proxyless                        # the full benchmark, ~25 min on 2 quiet cores
    python -m bench.proxyless --threads 1            # the same on a shared machine (OpenMP threads
                                                     # spin: 2 threads on 2 busy cores run 5-10x slower)
    python -m bench.proxyless --smoke --no-write     # a minute-scale check of the script itself

Time (2 cores, measured on a busy 2-core VM with 1 thread: weight step ~1.2 s, architecture step
~0.6 s at batch 64): 3 searches x (180 weight + 150 arch steps) ~15 min, 3 retrainings x 150 steps
~6 min, evolution 6 x 50 + 150 steps ~6 min, memory ~1 min, table ~0.5 min.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.proxyless_memory import memory_figures
from bench.report import md_table, omit, publish, results_path

logger = logging.getLogger("bench.proxyless")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default="cifar10:/work/shared/data/cifar10_subset.npz")
    add("--resolution", type=int, default=32)
    add("--width-mult", type=float, default=0.5, help="Width of the proxyless space (1.0 = the paper's).")
    add("--train-limit", type=int, default=5000, help="Training images (stratified subset).")
    add("--batch-size", type=int, default=64)
    add("--threads", type=int, default=2, help="torch threads for training.")
    add("--seed", type=int, default=0)
    add("--target-fractions", default="0.25,0.5,0.75",
        help="Targets: fastest + f * (slowest - fastest) network latency of the table, per f.")
    add("--targets-ms", default=None, help="Explicit targets in ms (overrides --target-quantiles).")
    add("--search-epochs", type=int, default=6)
    add("--warmup-epochs", type=int, default=1)
    add("--steps-per-epoch", type=int, default=30)
    add("--arch-lr", type=float, default=0.2, help="Adam lr of the logits (high: a search of ~150 arch steps).")
    add("--latency-loss", default="abs", choices=["abs", "add_linear", "mul_log"])
    add("--latency-weight", type=float, default=None)
    add("--derive", default="argmax", choices=["argmax", "target"],
        help="Rule of the network that is retrained; the other rule's network is measured too.")
    add("--derive-tolerance", type=float, default=0.05)
    add("--latency-unit-ms", type=float, default=1.0, help="mul_log's unit (0.001: microseconds, for sub-ms nets).")
    add("--retrain-epochs", type=int, default=3)
    add("--max-batches", type=int, default=50, help="Batches per epoch when (re)training networks.")
    add("--evolution-trials", type=int, default=6)
    add("--evolution-epochs", type=int, default=1)
    add("--evolution-targets", default="middle", choices=["middle", "all", "none"])
    add("--memory-batch", type=int, default=32, help="All paths at 32 px need ~90 MB per image.")
    add("--calibrate-samples", type=int, default=12, help="End-to-end samples to calibrate the table (0: raw).")
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--lut", type=Path, default=None, help="Reuse this table (default: build a fresh one under --out).")
    add("--out", type=Path, default=Path("runs/bench/proxyless"))
    add("--smoke", action="store_true", help="Tiny settings: checks the script, figures mean little.")
    add("--no-write", action="store_true", help="Print only: do not touch BENCHMARKS.md or bench/results/.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.resolution, args.train_limit, args.batch_size = 16, 256, 32
        args.search_epochs, args.steps_per_epoch, args.retrain_epochs, args.max_batches = 2, 3, 1, 3
        args.evolution_trials, args.memory_batch, args.calibrate_samples, args.measure = 2, 32, 4, "2,3,3"
        args.out = args.out.with_name(args.out.name + "-smoke")
    return args


# -- shared set-up -----------------------------------------------------------------------------------

def make_space(args: argparse.Namespace) -> Any:
    from search_spaces.spaces import get_space

    return get_space("proxyless", resolution=args.resolution, num_classes=10, width_mult=args.width_mult)


def lut_path(args: argparse.Namespace) -> Path:
    return args.lut or args.out / f"lut_proxyless_w{args.width_mult:g}_r{args.resolution}_onnxruntime_t1.json"


def ensure_lut(args: argparse.Namespace, space: Any, measurer: Any) -> Any:
    from predictors.latency import ensure_table

    path = lut_path(args)
    if args.lut is None:
        path.unlink(missing_ok=True)  # measured here and now, never a table left by another machine
    start = time.perf_counter()
    table = ensure_table(space, measurer, path, calibration_samples=args.calibrate_samples,
                         show_progress=sys.stderr.isatty())
    logger.info("table %s: %d entries, ready in %.0fs", path, len(table), time.perf_counter() - start)
    return table


# -- 2. searches ---------------------------------------------------------------------------------------

def pick_targets(args: argparse.Namespace, space: Any, table: Any) -> list[float]:
    """Spread over what the space can reach (not over random networks, which cluster near the
    middle: a target there is met by almost any network)."""
    from nas.oneshot.supernet import LatencyModel
    from nas.oneshot.layout import layout_for_space

    if args.targets_ms:
        return [float(v) for v in args.targets_ms.split(",")]
    model = LatencyModel(layout_for_space(space), table)
    fastest = model.of_choices(model.fastest_choices())
    slowest = model.of_choices([max(range(len(v)), key=v.__getitem__) for v in model.slot_ms])
    return [round(fastest + float(f) * (slowest - fastest), 4) for f in args.target_fractions.split(",")]


def train_config(args: argparse.Namespace, epochs: int) -> Any:
    from nas.training import recipe

    return recipe("final", epochs=epochs, batch_size=args.batch_size, seed=args.seed,
                  max_batches_per_epoch=args.max_batches)


def proxyless_runs(args: argparse.Namespace, space: Any, table: Any, data: Any, targets: list[float],
                   measurer: Any) -> list[dict[str, Any]]:
    from nas.search.trial import retrain
    from nas.oneshot.proxyless import ProxylessConfig, ProxylessSearch

    rows = []
    for target in targets:
        config = ProxylessConfig(
            target_ms=target, epochs=args.search_epochs, warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, arch_lr=args.arch_lr,
            latency_loss=args.latency_loss, latency_weight=args.latency_weight, latency_unit_ms=args.latency_unit_ms,
            derive=args.derive, derive_tolerance=args.derive_tolerance, seed=args.seed, device="cpu")
        start = time.perf_counter()
        search = ProxylessSearch(space, table, data, config)
        arch = search.run()
        search_s = time.perf_counter() - start
        (args.out / f"alpha_history_{target:g}ms.json").write_text(json.dumps(search.alpha_history(), indent=1))
        start = time.perf_counter()
        metrics, _ = retrain(arch, data, train_config(args, args.retrain_epochs), measurer, table)
        other_rule = "target" if args.derive == "argmax" else "argmax"
        other = search.derive(other_rule)
        rows.append({"target_ms": target, "search_s": search_s, "retrain_s": time.perf_counter() - start,
                     "blocks": arch.block_strings(), "history": search.history, "other_rule": other_rule,
                     "other_predicted_ms": table.predict(other),
                     "other_measured_ms": measurer.measure_archs([other])[0].median_ms, **metrics})
        logger.info("proxyless target %.3f ms: predicted %.3f, measured %.3f, test acc %.4f", target,
                    metrics["predicted_latency_ms"], metrics["measured_latency_ms"], metrics["test_accuracy"])
    return rows


def evolution_runs(args: argparse.Namespace, targets: list[float], measurer: Any) -> list[dict[str, Any]]:
    from nas.rundir.files import RunDirectory
    from nas.search.config import SearchConfig
    from nas.search.runner import finalize_best, run_search

    chosen = {"middle": targets[len(targets) // 2:len(targets) // 2 + 1], "all": targets, "none": []}
    rows = []
    for target in chosen[args.evolution_targets]:
        run_dir = args.out / f"evolution_{target:g}ms"
        RunDirectory(run_dir).clear()
        config = SearchConfig(space="proxyless", latency_budget_ms=target, lut_path=str(lut_path(args).resolve()),
                              dataset=args.data, resolution=args.resolution, seed=args.seed,
                              space_options={"width_mult": args.width_mult}, strategy="evolution",
                              trials=args.evolution_trials, train=train_config(args, args.evolution_epochs),
                              train_limit=args.train_limit)
        start = time.perf_counter()
        try:
            summary = run_search(config, run_dir, progress=False)
            search_s = time.perf_counter() - start
            if summary.best is None:
                rows.append({"target_ms": target, "error": "no feasible trial"})
                continue
            start = time.perf_counter()
            metrics = finalize_best(run_dir, epochs=args.retrain_epochs, measurer=measurer)
        except Exception as error:  # the runner is being finished elsewhere: report, do not hide
            logger.exception("evolution at %.3f ms failed", target)
            rows.append({"target_ms": target, "error": f"{type(error).__name__}: {error}"})
            continue
        rows.append({"target_ms": target, "search_s": search_s, "retrain_s": time.perf_counter() - start,
                     "trials": summary.trials, "ok_trials": summary.ok,
                     "blocks": RunDirectory(run_dir).read_best_arch().block_strings(), **metrics.to_json()})
    return rows


# -- report ----------------------------------------------------------------------------------------------

def _mb(value: float) -> str:
    return f"{value / 2**20:.1f} MB"


def _memory_section(args: argparse.Namespace, memory: list[dict[str, Any]]) -> list[str]:
    plain = next(row for row in memory if row["mode"] == "plain")
    device = memory[0]["device"]
    how = ("CUDA peak allocation" if device == "cuda" else
           "peak RSS of the step over RSS before it (VmHWM reset via /proc/self/clear_refs)" if memory[0]["hwm_reset"]
           else "ru_maxrss growth over the step")
    paths = {"plain": "1 (a plain network)", "binarized-weight": "1 per layer", "binarized-arch": "2 per layer (1 no-grad)",
             "all-paths": "all (DARTS-style)"}
    rows = [[row["mode"], paths[row["mode"]], _mb(row["peak_bytes"]),
             f"{row['peak_bytes'] / max(plain['peak_bytes'], 1):.2f}", _mb(row["saved_bytes"]),
             f"{row['saved_bytes'] / max(plain['saved_bytes'], 1):.2f}"] for row in memory]
    return [(f"**Memory of one training step** (forward + backward, batch {args.memory_batch}, same sampled path, "
             f"each mode in a fresh process on {device}). *Peak* = {how}; *saved* = bytes autograd keeps for backward "
             "(parameters excluded)."),
            *md_table(["mode", "paths run", "peak", "× plain", "saved activations", "× plain"], rows)]


def _targets_paragraph(args: argparse.Namespace, targets: list[float], span: tuple[float, float],
                       sampled: dict[str, float]) -> str:
    return (f"**Targets** {', '.join(f'{t:.3f}' for t in targets)} ms: fractions {args.target_fractions} of the way "
            f"from the table's fastest ({span[0]:.3f} ms) to its slowest network ({span[1]:.3f} ms), unless given; 500 "
            f"random networks span {sampled['min']:.3f}-{sampled['max']:.3f} ms (median {sampled['median']:.3f}). "
            f"ProxylessNAS: {args.search_epochs} epochs ({args.warmup_epochs} weight-only) of {args.steps_per_epoch} "
            f"weight steps, one two-path architecture step after each; loss `{args.latency_loss}`, arch lr "
            f"{args.arch_lr:g}. Derivation `{args.derive}` (retrained); the other rule's network is only measured "
            f"(`argmax`: the most likely option per layer, the paper's; `target`: the most probable network within "
            f"±{100 * args.derive_tolerance:g}% of the target by the table). Every network is then trained from "
            f"scratch for {args.retrain_epochs} epochs of at most {args.max_batches} batches and tested on the 2000 "
            "test images.")


def _runs_table(args: argparse.Namespace, proxyless: list[dict[str, Any]], evolution: list[dict[str, Any]]) -> list[str]:
    def derived(row: dict[str, Any]) -> list[str]:  # the retrained network's columns, both strategies
        return [f"{row['predicted_latency_ms']:.3f} ms", f"{row['measured_latency_ms']:.3f} ms",
                f"{100 * (row['measured_latency_ms'] / row['target_ms'] - 1):+.1f}%", f"{row['search_s']:.0f} s",
                f"{row['retrain_s']:.0f} s", f"{row['test_accuracy']:.4f}", str(len(row["blocks"]))]

    rows = [["proxyless", f"{row['target_ms']:.3f} ms", f"{row['history'][-1]['expected_latency_ms']:.3f} ms",
             f"{row['other_rule']}: {row['other_predicted_ms']:.3f} / {row['other_measured_ms']:.3f} ms "
             f"({100 * (row['other_measured_ms'] / row['target_ms'] - 1):+.1f}%)", *derived(row)] for row in proxyless]
    rows += [["evolution", f"{row['target_ms']:.3f} ms", *["-"] * 8, row["error"]] if "error" in row else
             [f"evolution ({row['trials']} trials × {args.evolution_epochs} ep)", f"{row['target_ms']:.3f} ms", "-",
              "-", *derived(row)] for row in evolution]
    return md_table(["strategy", "target", "E[LAT] end", "other rule: predicted / measured", "derived: predicted",
                     "measured", "measured vs target", "search", "retrain", "test acc", "blocks"], rows)


def _convergence(args: argparse.Namespace, proxyless: list[dict[str, Any]]) -> list[str]:
    lines = [("Convergence (per epoch: E[LAT] / argmax net / target-rule net in ms, mean entropy in nats; full "
              f"per-slot probabilities in `{args.out}/alpha_history_*.json`):"), ""]
    for row in proxyless:
        steps = "; ".join(f"{h['expected_latency_ms']:.2f}/{h['latency_by_rule_ms']['argmax']:.2f}/"
                          f"{h['latency_by_rule_ms']['target']:.2f}, {h['entropy']:.2f}" for h in row["history"])
        lines.append(f"- target {row['target_ms']:.3f} ms: {steps}")
    return lines


def render(args: argparse.Namespace, table: Any, r: dict[str, Any]) -> str:
    lines = [
        f"`proxyless` space, width {args.width_mult:g}, {args.resolution} px, 10 classes; data `{args.data}`, "
        f"{args.train_limit} training images; batch {args.batch_size}; torch threads {args.threads}; seed {args.seed}. "
        f"Latency table: {len(table)} entries, onnxruntime x1 thread, "
        + (f"calibrated: {table.calibration}." if table.calibration else "raw sums."),
        "", *_memory_section(args, r["memory"]),
        "", _targets_paragraph(args, r["targets"], r["span"], r["random_ms"]),
        *_runs_table(args, r["proxyless"], r["evolution"]),
        "", *_convergence(args, r["proxyless"]),
        "", f"Whole benchmark: {r['wall_s'] / 60:.1f} min. Raw numbers: `{results_path('proxyless')}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from nas.training import load_dataset
    from predictors.latency import LocalMeasurer, MeasureSettings

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    space = make_space(args)
    measurer = LocalMeasurer("onnxruntime", threads=1, settings=MeasureSettings.parse(args.measure))
    table = ensure_lut(args, space, measurer)
    memory = memory_figures(args, lut_path(args))
    targets = pick_targets(args, space, table)
    span = tuple(pick_targets(argparse.Namespace(targets_ms=None, target_fractions="0,1"), space, table))
    random_ms = {name: table.quantile(space, q, 500, args.seed) for name, q in (("min", 0), ("median", 0.5), ("max", 1))}
    data = load_dataset(args.data, args.resolution, seed=args.seed, limit=args.train_limit)
    proxyless = proxyless_runs(args, space, table, data, targets, measurer)
    evolution = evolution_runs(args, targets, measurer)
    results = {"memory": memory, "targets": targets, "span": span, "random_ms": random_ms, "proxyless": proxyless,
               "evolution": evolution, "wall_s": time.perf_counter() - started}
    body = render(args, table, results)
    print(body)
    if not args.no_write:
        publish("proxyless", "ProxylessNAS: path-binarization memory, latency targets, accuracy", body,
                {**results, "proxyless": [omit(row, "history") for row in proxyless]})  # per epoch: in the body


if __name__ == "__main__":
    main()
