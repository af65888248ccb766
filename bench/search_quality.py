"""Search quality on the CIFAR-10 subset at 32x32 under a latency budget on this CPU.

At an equal trial budget, each strategy's best feasible architecture (search-time val accuracy,
then test accuracy after one shared final recipe) against random search and against zoo networks
(`bench.baselines`) width-scaled by end-to-end measurement to the same budget and trained with
the same final recipe. Then trials per hour with the Ray runner at 1 vs 2 workers.

Phases: latency table (built if absent) -> budget (a quantile of sampled architectures' predicted
latency) -> zoo width fits (measured while nothing else of the benchmark runs) -> a pool of
`--jobs` subprocesses, 1 torch thread each, running every search (then its final retraining) and
every zoo retraining (accuracy is compared, not speed, so parallel runs are fine) -> one
interleaved end-to-end measurement of every final model -> the Ray runs, alone.

Default sizes, from CPU time measured on this 2-core VM (1 thread, batch 16): a trial (2 epochs
on 800 images + 2 x 1,000 val images) ~22 s; a final training (2 epochs on 9,000 images, batch 64)
~165 s. 5 x 16 trials + 10 final trainings ~ 3,400 core-s ~ 29 min on 2 jobs, plus zoo fits,
measurement and Ray ~ 5 min: ~35 min on 2 quiet cores when the table exists (building it adds
~10-15 min). Shorter trials (batch 64, or fewer images) leave val accuracy at chance (10%).

    python -m bench.search_quality
    python -m bench.search_quality --trials 3 --epochs 1 --train-limit 300 --final-epochs 1 --final-limit 600 \
        --strategies random evolution --zoo mobilenet_v2 --ray-trials 2 --no-write        # smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.baselines import ZOO_BASELINES, fit_zoo, measure_finals, zoo_section
from bench.ray_throughput import ray_section
from bench.report import REPO, fmt, md_table, omit, pct, publish, results_path
from bench.task_pool import run_pool, work
from nas.training import RECIPES, recipe
from nas.training.data import absolute_dataset

logger = logging.getLogger("bench.search_quality")
STRATEGIES = ("random", "evolution", "mnas-rl", "tpe", "nsga2")
SPACE, RESOLUTION, CLASSES = "mnasnet", 32, 10
PROXY, FINAL = RECIPES.get("proxy"), RECIPES.get("final")
T = TypeVar("T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default="cifar10:/work/shared/data/cifar10_subset.npz")
    add("--lut", type=Path, default=REPO / "runs/bench/latency/mnasnet_r32_onnxruntime_t1.json",
        help="mnasnet@32 table (built with onnxruntime, 1 thread, when absent).")
    add("--calibrate-samples", type=int, default=20,
        help="End-to-end samples to calibrate a table this script builds (0: leave it raw).")
    add("--budget-ms", type=float, default=None, help="Explicit budget (overrides --budget-quantile).")
    add("--budget-quantile", type=float, default=0.3)
    add("--budget-samples", type=int, default=2000)
    add("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    add("--seeds", nargs="+", type=int, default=[0])
    add("--trials", type=int, default=16)
    add("--epochs", type=int, default=PROXY["epochs"], help="Epochs per search trial.")
    add("--train-limit", type=int, default=800, help="Training images per search trial (stratified).")
    add("--batch-size", type=int, default=PROXY["batch_size"], help="Search trials' batch (recipe `proxy`).")
    add("--final-epochs", type=int, default=FINAL["epochs"], help="Final recipe, shared by every model.")
    add("--final-limit", type=int, default=None, help="Final recipe's training images (default: all 9,000).")
    add("--final-batch-size", type=int, default=FINAL["batch_size"])
    add("--zoo", nargs="+", default=list(ZOO_BASELINES), choices=list(ZOO_BASELINES))
    add("--width-range", nargs=2, type=float, default=[0.1, 2.0])
    add("--bisect-steps", type=int, default=7)
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--jobs", type=int, default=2, help="Parallel training subprocesses (1 thread each).")
    add("--workers-ray", nargs="+", type=int, default=[1, 2])
    add("--ray-trials", type=int, default=6)
    add("--ray-epochs", type=int, default=1)
    add("--ray-train-limit", type=int, default=1000)
    add("--out", type=Path, default=REPO / "runs/bench/search_quality")
    add("--skip-ray", action="store_true")
    add("--skip-zoo", action="store_true")
    add("--no-write", action="store_true", help="Print only: do not touch BENCHMARKS.md or bench/results/.")
    add("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- subprocess tasks -------------------------------------------------------------------------------

def final_train(s: dict[str, Any], arch: Any, seed: int, table: Any = None) -> dict[str, Any]:
    """The one final recipe for every model (searched or zoo): `nas.search.trial.retrain`, which is
    what `finalize_best` runs, but with the train limit of the recipe and without measuring
    latency here (another job is training on the other core; all measuring is done later, idle)."""
    from nas.search.trial import retrain
    from nas.training import load_dataset

    data = load_dataset(s["data"], RESOLUTION, seed=seed, limit=s["final_limit"])
    start = time.perf_counter()
    config = recipe("final", epochs=s["final_epochs"], batch_size=s["final_batch_size"], seed=seed)
    metrics, _ = retrain(arch, data, config, None, table)
    return {**metrics, "final_train_images": len(data.train), "final_wall_s": time.perf_counter() - start}


def search_task(task: dict[str, Any]) -> dict[str, Any]:
    from nas.rundir.files import RunDirectory
    from nas.search.config import SearchConfig
    from nas.search.runner import open_table, run_search
    from search_spaces.spaces import get_space

    s, seed = task["settings"], task["seed"]
    config = SearchConfig(space=SPACE, latency_budget_ms=task["budget_ms"], lut_path=s["lut"], dataset=s["data"],
                          resolution=RESOLUTION, strategy=task["strategy"], seed=seed, trials=s["trials"],
                          train=recipe("proxy", epochs=s["epochs"], batch_size=s["batch_size"], seed=seed),
                          train_limit=s["train_limit"])
    run_dir = Path(task["run_dir"])
    RunDirectory(run_dir).clear()  # a benchmark run always starts afresh
    start = time.perf_counter()
    summary = run_search(config, run_dir, progress=False)
    out: dict[str, Any] = {"search_wall_s": time.perf_counter() - start, "search_elapsed_s": summary.elapsed_s,
                           "trials": summary.trials, "ok": summary.ok, "failed": summary.failed,
                           "infeasible": summary.infeasible}
    records = RunDirectory(run_dir).read_trials()
    out["feasible"] = sum(1 for r in records if r.feasible)
    out["trial_log"] = [{"trial_id": r.trial_id, "status": r.result.status, "feasible": r.feasible,
                         "val_accuracy": r.result.accuracy, "latency_ms": r.result.latency_ms,
                         "train_time_s": r.result.train_time_s} for r in records]
    times = [t["train_time_s"] for t in out["trial_log"] if t["status"] == "ok" and t["train_time_s"]]
    out["mean_trial_s"] = statistics.fmean(times) if times else None
    if summary.best is None:
        return out
    best = summary.best
    out.update(best_trial=best.trial_id, best_val_accuracy=best.result.accuracy,
               predicted_ms=best.result.latency_ms, blocks=best.arch.block_strings(), arch=best.arch.to_dict())
    table = open_table(config, get_space(SPACE, resolution=RESOLUTION, num_classes=CLASSES))
    out["final"] = final_train(s, best.arch, seed, table)
    return out


def zoo_task(task: dict[str, Any]) -> dict[str, Any]:
    from search_spaces.spec import ArchSpec

    return {"final": final_train(task["settings"], ArchSpec.from_dict(task["arch"]), task["seed"])}


# -- main-process phases ----------------------------------------------------------------------------

def ensure_lut(args: argparse.Namespace, space: Any) -> tuple[Any, str, Any]:
    """The table, whether it existed, and a measurer of its backend and threads (onnxruntime on
    1 thread for a table this run builds)."""
    from predictors.latency import LatencyTable, LocalMeasurer, MeasureSettings, ensure_table

    existing = LatencyTable.load(args.lut).metadata if args.lut.is_file() else {}
    measurer = LocalMeasurer(str(existing.get("backend", "onnxruntime")), threads=int(existing.get("threads", 1)),
                             settings=MeasureSettings.parse(args.measure))
    # calibrated, so that predictions are in end-to-end milliseconds like the zoo's measured latencies
    table = ensure_table(space, measurer, args.lut, calibration_samples=args.calibrate_samples)
    return table, "existing" if existing else "built by this run", measurer


def choose_budget(args: argparse.Namespace, space: Any, table: Any) -> tuple[float, str]:
    if args.budget_ms is not None:
        return args.budget_ms, "given (--budget-ms)"
    budget = round(table.quantile(space, args.budget_quantile, args.budget_samples, seed=0), 4)
    median = table.quantile(space, 0.5, args.budget_samples, seed=0)
    return budget, (f"{args.budget_quantile:.0%} quantile of the table-predicted latency of {args.budget_samples:,} "
                    f"architectures sampled from the space (seed 0; median {median:.3f} ms)")


def train_all(args: argparse.Namespace, settings: dict[str, Any], budget: float, zoo_fits: dict[str, Any]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every search (then its final training) and every zoo network's final training, in the pool."""
    # searches first (the long tasks), zoo retrainings fill the slots they leave
    tasks = [{"kind": "search", "name": f"{strategy}-s{seed}", "strategy": strategy, "seed": seed, "budget_ms": budget,
              "run_dir": str(args.out / "runs" / f"{strategy}-s{seed}"), "settings": settings}
             for seed in args.seeds for strategy in args.strategies]
    tasks += [{"kind": "zoo", "name": f"zoo-{name}-s{seed}", "model": name, "seed": seed, "arch": fit["arch"],
               "settings": settings} for seed in args.seeds for name, fit in zoo_fits.items()]
    results = run_pool("bench.search_quality", tasks, args.jobs, args.out / "tasks")
    strategies = {t["name"]: {"strategy": t["strategy"], "seed": t["seed"], **results[t["name"]]}
                  for t in tasks if t["kind"] == "search"}
    zoo_rows = {t["name"]: {"model": t["model"], "seed": t["seed"], **results[t["name"]]}
                for t in tasks if t["kind"] == "zoo"}
    return strategies, zoo_rows


def ray_runs(args: argparse.Namespace, settings: dict[str, Any], budget: float) -> dict[str, Any]:
    """One random search on Ray per worker count, one at a time (`bench.ray_throughput`)."""
    tasks = [{"kind": "ray", "name": f"ray-w{w}", "workers": w, "budget_ms": budget, "space": SPACE,
              "resolution": RESOLUTION, "run_dir": str(args.out / "runs" / f"ray-w{w}"), "settings": settings}
             for w in args.workers_ray]
    done = run_pool("bench.ray_throughput", tasks, 1, args.out / "tasks")
    return {name: {"workers": int(name[5:]), **row} for name, row in done.items()}


def _timed(phases: dict[str, float], key: str, step: Callable[[], T]) -> T:
    mark = time.perf_counter()
    result = step()
    phases[key] = time.perf_counter() - mark
    return result


# -- report -----------------------------------------------------------------------------------------

def _settings(r: dict[str, Any]) -> list[str]:
    a, phases = r["settings"], r["phases"]
    spent = ", ".join(f"{key[:-2]} {value:.0f} s" for key, value in phases.items() if key != "total_s")
    final_images = "all 9,000" if a["final_limit"] is None else a["final_limit"]
    return [
        (f"**Budget {r['budget_ms']:.3f} ms**: {r['budget_how']}. Table `{r['lut_shown']}` ({r['lut_state']}; "
        f"{r['lut_backend']}, {r['lut_threads']} thread; {r['lut_calibration']}). Measured latencies: batch 1, same "
        f"backend and threads, protocol {a['measure']} (warm-up, blocks, runs per block), every final model in one "
        "interleaved call while nothing else of the benchmark runs."),
        "",
        (f"Search: `{SPACE}` space at {RESOLUTION} px, hard constraint, {a['trials']} trials per strategy and seed, each "
        f"trained {a['epochs']} epoch(s) on {a['train_limit']} stratified training images (SGD lr 0.05, cosine, batch "
        f"{a['batch_size']}) and scored on the 1,000-image val split; seeds {a['seeds']}. **Final recipe**, the same "
        f"for every model: {a['final_epochs']} epoch(s) from scratch on {final_images} training images (batch "
        f"{a['final_batch_size']}); test = the 2,000 test images of the subset. {a['jobs']} jobs in parallel, 1 torch "
         f"thread each; 1-min load average at start {r['load_at_start']:.1f}. **Total wall time "
         f"{phases['total_s'] / 60:.1f} min** ({spent})."),
    ]


def render(r: dict[str, Any]) -> str:
    budget = r["budget_ms"]

    def latency(ms: float | None) -> str:
        return fmt(ms, ".3f", " ms") + ("" if ms is None or ms <= budget else " (over)")

    lines = _settings(r)
    rows = []
    for key, row in r["strategies"].items():
        if "final" not in row:
            rows.append([row["strategy"], str(row["seed"]), row.get("error", "no feasible trial")] + ["—"] * 11)
            continue
        final = row["final"]
        random = r["strategies"].get(f"random-s{row['seed']}", {}).get("final", {}).get("test_accuracy")
        delta = "—" if random is None or row["strategy"] == "random" else \
            f"{100 * (final['test_accuracy'] - random):+.1f} pt"
        rows.append([row["strategy"], str(row["seed"]), f"{row['ok']} / {row['feasible']} of {row['trials']}",
                     pct(row["best_val_accuracy"]), pct(final["test_accuracy"]), delta,
                     pct(final["final_val_accuracy"]), latency(row["predicted_ms"]),
                     latency(r["measured"].get(key, {}).get("median_ms")), f"{final['params'] / 1e6:.2f} M",
                     fmt(final["macs"] and final["macs"] / 1e6, ".1f", " M"), fmt(row["mean_trial_s"], ".0f", " s"),
                     f"{row['search_wall_s']:.0f} s", f"{final['final_wall_s']:.0f} s"])
    lines += md_table(["strategy", "seed", "trials: trained / feasible", "best val acc (search)", "final test acc",
                       "vs random", "final val acc", "predicted", "measured", "params", "MACs", "mean trial",
                       "search wall", "final train"], rows)
    if len(r["settings"]["seeds"]) > 1:
        rows = []
        for strategy in r["settings"]["strategies"]:
            done = [v for v in r["strategies"].values() if v["strategy"] == strategy and "final" in v]
            tests = [v["final"]["test_accuracy"] for v in done]
            if len(tests) > 1:
                spread = f"{pct(statistics.fmean(tests))} ± {100 * statistics.stdev(tests):.1f}"
                rows.append([strategy, str(len(tests)), spread,
                             pct(statistics.fmean(v["best_val_accuracy"] for v in done))])
        lines += md_table(["strategy", "seeds", "final test acc, mean ± sd", "best val acc (search), mean"], rows)
    if r["zoo"]:
        lines += zoo_section(r["settings"], r["zoo"], r["zoo_fits"], r["measured"], latency)
    if r["ray"]:
        lines += ray_section(r["settings"], r["ray"])
    lines += ["", f"Raw numbers: `{r['results_shown']}`; run directories and task logs in "
              f"`{_shown(Path(r['settings']['out']))}`."]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("predictors.latency.measure").setLevel(logging.WARNING)  # per-item retry chatter
    if args.worker is not None:
        work(args.worker, lambda task: {"search": search_task, "zoo": zoo_task}[task["kind"]](task))
        return
    import torch

    from search_spaces.spaces import get_space

    torch.set_num_threads(1)
    started, phases = time.perf_counter(), {}
    load_at_start = os.getloadavg()[0]  # the figures assume a quiet machine: record how quiet it was
    # workers run from the repository root: every path they are given must be absolute
    args.out, args.lut, args.data = args.out.resolve(), args.lut.resolve(), absolute_dataset(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    space = get_space(SPACE, resolution=RESOLUTION, num_classes=CLASSES)
    table, lut_state, measurer = _timed(phases, "lut_s", lambda: ensure_lut(args, space))
    budget, budget_how = choose_budget(args, space, table)
    logger.info("budget %.4f ms: %s", budget, budget_how)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"}
    zoo_fits = _timed(phases, "zoo_fit_s", lambda: {} if args.skip_zoo else fit_zoo(
        args.zoo, RESOLUTION, CLASSES, budget, measurer, args.width_range, args.bisect_steps))
    strategies, zoo_rows = _timed(phases, "train_s", lambda: train_all(args, settings, budget, zoo_fits))
    finals = {name: row["arch"] for name, row in strategies.items() if "arch" in row}
    finals.update({f"zoo-{name}": fit["arch"] for name, fit in zoo_fits.items()})
    measured = _timed(phases, "measure_s", lambda: measure_finals(finals, measurer))
    ray = {} if args.skip_ray else _timed(phases, "ray_s", lambda: ray_runs(args, settings, budget))
    phases["total_s"] = time.perf_counter() - started

    calibration = (f"calibrated: {table.calibration}"
                   if table.calibration else "raw per-op sums, no calibration: predicted and measured ms may differ")
    report = {"settings": settings, "budget_ms": budget, "budget_how": budget_how, "lut_state": lut_state,
              "lut_backend": table.metadata.get("backend"), "lut_threads": table.metadata.get("threads"),
              "load_at_start": load_at_start, "lut_calibration": calibration, "phases": phases,
              "strategies": strategies, "zoo_fits": zoo_fits, "zoo": zoo_rows, "measured": measured, "ray": ray,
              "lut_shown": _shown(args.lut), "results_shown": results_path("search_quality")}
    body = render(report)
    print(body)
    if not args.no_write:  # specs and per-trial logs stay in the run directories
        publish("search_quality", "Search quality on CIFAR-10 (subset)", body, {
            **report, "strategies": {k: omit(row, "arch", "trial_log") for k, row in strategies.items()},
            "zoo_fits": {k: omit(fit, "arch") for k, fit in zoo_fits.items()}})


if __name__ == "__main__":
    main()
