"""Is `nas search` worth running, or should one width-scale a zoo network to the budget? Search
quality on the CIFAR-10 subset at 32x32 under a latency budget on this CPU, at equal search wall
time, on several seeds.

Protocol:
- Budget: a quantile of the table-predicted latency of architectures sampled from the `mnasnet`
  space (the table is built, onnxruntime on 1 thread and calibrated, when absent).
- Every strategy searches for the same wall time (`--search-seconds`, hard constraint, trials
  trained with the short `proxy` recipe on `--train-limit` images), once per seed; its best trial
  is the answer.
- Zoo baselines: each network adapted to small inputs and width-bisected, by end-to-end
  measurement, to the largest width within the budget (`bench.baselines`).
- One final recipe for every network (`nas.training.recipes` "final": crop + flip, label
  smoothing, cosine, all 9,000 training images), seeded like the search (zoo: one per seed);
  test accuracy on the 2,000 test images. Its length is checked by training one zoo network for
  `--curve-epochs` too.
- Every final network measured end to end in one interleaved call while nothing else runs.
- Signals: for every network trained to the end, the short search training, the final run's val
  accuracy after a few epochs, zero-cost proxies, params, MACs, measured latency; Kendall tau of
  each with the final test accuracy (`bench.search_signals`).

Work runs in a pool of `--jobs` subprocesses with one torch thread each. Everything is cached:
searches by (strategy, seed) under OUT/searches, final trainings by (arch hash, recipe, seed)
under OUT/finals (`bench.final_cache`), zoo widths by budget; a killed run re-run resumes.

    nohup python -m bench.search_quality > runs/bench/search_quality.log 2>&1 &
    python -m bench.search_quality --seeds 0 --search-seconds 20 --train-limit 200 --final-epochs 1 \\
        --final-limit 500 --curve-epochs --zoo mobilenet_v2 --out /tmp/sq --no-write      # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bench.baselines import ZOO_BASELINES, fit_zoo, measure_finals
from bench.final_cache import cached_final
from bench.report import REPO, omit, publish, results_path
from bench.task_pool import run_pool, work
from nas.rundir.atomic import write_json_atomic
from nas.training import RECIPES, recipe
from nas.training.data import absolute_dataset

logger = logging.getLogger("bench.search_quality")
SPACE, RESOLUTION, CLASSES = "mnasnet", 32, 10
DEFAULT_STRATEGY, BASELINE = "band-screen", "random"
PROXY, FINAL = RECIPES.get("proxy"), RECIPES.get("final")


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
    add("--strategies", nargs="+", default=[BASELINE, DEFAULT_STRATEGY])
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--search-seconds", type=float, default=480.0, help="Search wall time per strategy and seed.")
    add("--trials-cap", type=int, default=500, help="Trial cap of each search (the wall time binds first).")
    add("--epochs", type=int, default=PROXY["epochs"], help="Epochs per search trial.")
    add("--train-limit", type=int, default=800, help="Training images per search trial (stratified).")
    add("--batch-size", type=int, default=PROXY["batch_size"], help="Search trials' batch (recipe `proxy`).")
    add("--final-epochs", type=int, default=FINAL["epochs"], help="Final recipe, shared by every model.")
    add("--final-limit", type=int, default=None, help="Final recipe's training images (default: all 9,000).")
    add("--curve-epochs", nargs="*", type=int, default=[6, 24],
        help="Other lengths of the final recipe for the first zoo network, seed 0 (the length check).")
    add("--zoo", nargs="+", default=["mobilenet_v2", "mnasnet_b1"], choices=list(ZOO_BASELINES))
    add("--width-range", nargs=2, type=float, default=[0.1, 2.0])
    add("--bisect-steps", type=int, default=7)
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--proxies", nargs="*", default=["nwot", "synflow", "snip", "grad_norm"])
    add("--jobs", type=int, default=2, help="Parallel training subprocesses (1 thread each).")
    add("--out", type=Path, default=REPO / "runs/bench/search_quality")
    add("--no-write", action="store_true", help="Print only: do not touch BENCHMARKS.md or bench/results/.")
    add("--cached-only", action="store_true",
        help="Report what the caches hold; train nothing new (the short-training signal and measuring still run).")
    add("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def final_config(s: dict[str, Any], seed: int, epochs: int | None = None) -> Any:
    return recipe("final", epochs=epochs or s["final_epochs"], seed=seed)


def final_training(s: dict[str, Any], arch: dict[str, Any], seed: int, epochs: int | None = None
                   ) -> tuple[Any, Any, dict[str, Any]]:
    """(spec, config, keyword arguments) of `arch`'s final training, for `cached_final` and `cache_path`."""
    from search_spaces.spec import ArchSpec

    return (ArchSpec.from_dict(arch), final_config(s, seed, epochs),
            {"dataset": s["data"], "cache": Path(s["out"]) / "finals", "limit": s["final_limit"]})


def short_config(s: dict[str, Any], seed: int) -> Any:
    return recipe("proxy", epochs=s["epochs"], batch_size=s["batch_size"], seed=seed)


# -- subprocess tasks -------------------------------------------------------------------------------

def search_task(task: dict[str, Any]) -> dict[str, Any]:
    """One time-limited search (cached by strategy and seed), then its winner's final training."""
    summary_path = Path(task["summary"])
    out = json.loads(summary_path.read_text()) if summary_path.is_file() else _search(task)
    write_json_atomic(summary_path, out)
    if "arch" in out:
        arch, config, where = final_training(task["settings"], out["arch"], task["seed"])
        out["final"] = cached_final(arch, config, resolution=RESOLUTION, **where)
    return out


def _search(task: dict[str, Any]) -> dict[str, Any]:
    from nas.rundir.files import RunDirectory
    from nas.search.config import SearchConfig
    from nas.search.runner import run_search

    s, seed = task["settings"], task["seed"]
    config = SearchConfig(space=SPACE, latency_budget_ms=task["budget_ms"], lut_path=s["lut"], dataset=s["data"],
                          resolution=RESOLUTION, strategy=task["strategy"], seed=seed, trials=s["trials_cap"],
                          time_limit=s["search_seconds"], train=short_config(s, seed), train_limit=s["train_limit"])
    run_dir = Path(task["run_dir"])
    RunDirectory(run_dir).clear()  # an unfinished search starts afresh: its wall time must be whole
    start = time.perf_counter()
    summary = run_search(config, run_dir, progress=False)
    out: dict[str, Any] = {"strategy": task["strategy"], "seed": seed, "search_wall_s": time.perf_counter() - start,
                           "trials": summary.trials, "ok": summary.ok, "failed": summary.failed,
                           "infeasible": summary.infeasible}
    records = RunDirectory(run_dir).read_trials()
    out["trial_log"] = [{"trial_id": r.trial_id, "status": r.result.status, "val_accuracy": r.result.accuracy,
                         "latency_ms": r.result.latency_ms, "train_time_s": r.result.train_time_s,
                         "origin": r.candidate.info.get("origin")} for r in records]
    if summary.best is not None:
        best = summary.best
        out.update(best_trial=best.trial_id, best_val_accuracy=best.result.accuracy,
                   predicted_ms=best.result.latency_ms, arch=best.arch.to_dict())
    return out


def train_task(task: dict[str, Any]) -> dict[str, Any]:
    """A cached training of a given architecture: a zoo network's final recipe, a curve length,
    or the short search recipe as a signal."""
    s = task["settings"]
    arch, config, where = final_training(s, task["arch"], task["seed"], task.get("epochs"))
    if task["recipe"] == "short":
        config, where["limit"] = short_config(s, task["seed"]), s["train_limit"]
    return cached_final(arch, config, resolution=RESOLUTION, **where)


# -- main-process phases ----------------------------------------------------------------------------

def ensure_lut(args: argparse.Namespace, space: Any) -> tuple[Any, str, Any]:
    """The table, whether it existed, and a measurer of its backend and threads."""
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


def zoo_widths(args: argparse.Namespace, budget: float, measurer: Any) -> dict[str, Any]:
    """Width fits, cached per budget (they are measured: nothing else may run meanwhile)."""
    path = args.out / f"zoo_fits_{budget:.4f}.json"
    fits = json.loads(path.read_text()) if path.is_file() else {}
    missing = [name for name in args.zoo if name not in fits]
    if missing:
        fits.update(fit_zoo(missing, RESOLUTION, CLASSES, budget, measurer, args.width_range, args.bisect_steps))
        write_json_atomic(path, fits)
    return {name: fits[name] for name in args.zoo}


def pool_tasks(args: argparse.Namespace, settings: dict[str, Any], budget: float,
               fits: dict[str, Any]) -> list[dict[str, Any]]:
    """Searches first (the long tasks); zoo trainings and the curve fill the slots they leave."""
    tasks = [{"kind": "search", "name": f"{strategy}-s{seed}", "strategy": strategy, "seed": seed,
              "budget_ms": budget, "run_dir": str(args.out / "searches" / f"{strategy}-s{seed}"),
              "summary": str(args.out / "searches" / f"{strategy}-s{seed}.summary.json"), "settings": settings}
             for seed in args.seeds for strategy in args.strategies]
    tasks += [{"kind": "train", "name": f"zoo-{name}-s{seed}", "recipe": "final", "seed": seed, "arch": fit["arch"],
               "settings": settings} for seed in args.seeds for name, fit in fits.items()]
    if args.zoo:
        first = args.zoo[0]
        tasks += [{"kind": "train", "name": f"curve-{first}-e{epochs}", "recipe": "final", "seed": args.seeds[0],
                   "epochs": epochs, "arch": fits[first]["arch"], "settings": settings}
                  for epochs in args.curve_epochs if epochs != args.final_epochs]
    return tasks


def is_cached(task: dict[str, Any]) -> bool:
    """Whether a pool task's result is all in the caches (a search: its summary and final training)."""
    from bench.final_cache import cache_path

    arch = task.get("arch")
    if task["kind"] == "search":
        summary = Path(task["summary"])
        if not summary.is_file():
            return False
        arch = json.loads(summary.read_text()).get("arch")
        if arch is None:  # no feasible trial: nothing to train
            return True
    spec, config, where = final_training(task["settings"], arch, task["seed"], task.get("epochs"))
    return cache_path(spec, config, **where).is_file()


def short_trainings(args: argparse.Namespace, settings: dict[str, Any], archs: dict[str, dict[str, Any]]
                    ) -> dict[str, Any]:
    """The search recipe (seed 0) on every final network: the 'short training' signal."""
    tasks = [{"kind": "train", "name": f"short-{key}", "recipe": "short", "seed": 0, "arch": arch,
              "settings": settings} for key, arch in archs.items()]
    done = run_pool("bench.search_quality", tasks, args.jobs, args.out / "tasks")
    return {key: done[f"short-{key}"] for key in archs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("predictors.latency.measure").setLevel(logging.WARNING)  # per-item retry chatter
    if args.worker is not None:
        work(args.worker, lambda task: {"search": search_task, "train": train_task}[task["kind"]](task))
        return
    import torch

    from bench.search_quality_report import render, results_document
    from bench.search_signals import signal_table
    from search_spaces.spaces import get_space

    torch.set_num_threads(1)
    started, phases = time.perf_counter(), {}
    load_at_start = os.getloadavg()[0]  # the figures assume a quiet machine: record how quiet it was
    # workers run from the repository root: every path they are given must be absolute
    args.out, args.lut, args.data = args.out.resolve(), args.lut.resolve(), absolute_dataset(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    space = get_space(SPACE, resolution=RESOLUTION, num_classes=CLASSES)

    def timed(key: str, step: Any) -> Any:
        mark = time.perf_counter()
        value = step()
        phases[key] = time.perf_counter() - mark
        return value

    table, lut_state, measurer = timed("lut_s", lambda: ensure_lut(args, space))
    budget, budget_how = choose_budget(args, space, table)
    logger.info("budget %.4f ms: %s", budget, budget_how)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"}
    fits = timed("zoo_fit_s", lambda: zoo_widths(args, budget, measurer))
    tasks = pool_tasks(args, settings, budget, fits)
    if args.cached_only:
        tasks = [task for task in tasks if is_cached(task)]
        logger.info("cached only: %d tasks (%s)", len(tasks), ", ".join(task["name"] for task in tasks))
    done = timed("train_s", lambda: run_pool("bench.search_quality", tasks, args.jobs, args.out / "tasks"))
    searches = {name: row for name, row in done.items() if not name.startswith(("zoo-", "curve-"))}
    archs = {name: row["arch"] for name, row in searches.items() if "arch" in row}
    archs.update({f"zoo-{name}": fit["arch"] for name, fit in fits.items()})
    short = timed("short_s", lambda: short_trainings(args, settings, archs))
    measured = timed("measure_s", lambda: measure_finals(archs, measurer))
    signals = timed("signals_s", lambda: signal_table(args.proxies, args.data, archs, RESOLUTION, CLASSES))
    phases["total_s"] = time.perf_counter() - started
    calibration = (f"calibrated: {table.calibration}"
                   if table.calibration else "raw per-op sums, no calibration: predicted and measured ms may differ")
    report = {"settings": settings, "budget_ms": budget, "budget_how": budget_how, "lut_state": lut_state,
              "lut_backend": table.metadata.get("backend"), "lut_threads": table.metadata.get("threads"),
              "lut_calibration": calibration, "load_at_start": load_at_start, "phases": phases,
              "searches": searches, "zoo_fits": fits, "trained": {k: v for k, v in done.items() if k not in searches},
              "short": short, "measured": measured, "signals": signals, "default_strategy": DEFAULT_STRATEGY,
              "baseline": BASELINE, "lut_shown": _shown(args.lut), "out_shown": _shown(args.out),
              "results_shown": results_path("search_quality")}
    document = results_document(report)
    body = render(report, document)
    print(body)
    write_json_atomic(args.out / "report.json", report)
    if not args.no_write:  # specs and per-trial logs stay in the run directories
        publish("search_quality", "Search quality on CIFAR-10 (subset): search vs random vs the scaled zoo", body,
                {**document, "searches": {k: omit(row, "arch", "trial_log") for k, row in searches.items()},
                 "zoo_fits": {k: omit(fit, "arch") for k, fit in fits.items()}})


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    main()
