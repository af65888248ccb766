"""Search quality on the CIFAR-10 subset at 32x32 under a latency budget on this CPU.

At an equal trial budget, each strategy's best feasible architecture (search-time val accuracy,
then test accuracy after one shared final recipe) against random search and against zoo networks
(bench/baselines.py) width-scaled by end-to-end measurement to the same budget and trained with
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

    python bench/search_quality.py
    python bench/search_quality.py --trials 3 --epochs 1 --train-limit 300 --final-epochs 1 --final-limit 600 \
        --strategies random evolution --zoo mobilenet_v2 --ray-trials 2 --no-write        # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(REPO))
from baselines import ZOO_BASELINES, fit_zoo, fmt, md_table, measure_finals, pct, zoo_section
from ray_throughput import ray_section, ray_task
from report import update_section
from task_pool import run_pool

logger = logging.getLogger("bench.search_quality")
STRATEGIES = ("random", "evolution", "mnas-rl", "tpe", "nsga2")
SPACE, RESOLUTION, CLASSES = "mnasnet", 32, 10


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
    add("--epochs", type=int, default=2, help="Epochs per search trial.")
    add("--train-limit", type=int, default=800, help="Training images per search trial (stratified).")
    add("--batch-size", type=int, default=16, help="Search trials' batch (16: more steps in a short trial).")
    add("--final-epochs", type=int, default=2, help="Final recipe, shared by every model.")
    add("--final-limit", type=int, default=None, help="Final recipe's training images (default: all 9,000).")
    add("--final-batch-size", type=int, default=64)
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
    add("--no-write", action="store_true", help="Do not touch BENCHMARKS.md.")
    add("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_measurer(backend: str, threads: int, protocol: str) -> Any:
    from predictors.latency import LocalMeasurer, MeasureSettings

    warmup, blocks, block_runs = (int(v) for v in protocol.split(","))
    return LocalMeasurer(backend, threads=threads, settings=MeasureSettings(warmup, blocks, block_runs))


def train_config(epochs: int, seed: int, batch_size: int) -> Any:
    from nas.training.train import TrainConfig

    # CPU explicitly: the budget and the timings are this CPU's, whatever else the machine has
    return TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device="cpu")


# -- subprocess tasks -------------------------------------------------------------------------------

def final_train(s: dict[str, Any], arch: Any, seed: int, table: Any = None) -> dict[str, Any]:
    """The one final recipe for every model (searched or zoo): `nas.search.trial.retrain`, which is
    what `finalize_best` runs, but with the train limit of the recipe and without measuring
    latency here (another job is training on the other core; all measuring is done later, idle)."""
    from nas.training.data import load_dataset
    from nas.search.trial import retrain

    data = load_dataset(s["data"], RESOLUTION, seed=seed, limit=s["final_limit"])
    start = time.perf_counter()
    metrics, _ = retrain(arch, data, train_config(s["final_epochs"], seed, s["final_batch_size"]), None, table)
    return {**metrics, "final_train_images": len(data.train), "final_wall_s": time.perf_counter() - start}


def search_task(task: dict[str, Any]) -> dict[str, Any]:
    from nas.rundir.files import RunDirectory
    from nas.search.runner import SearchConfig, open_table, run_search
    from search_spaces.space import get_space
    from search_spaces.spec import ArchSpec

    s, seed = task["settings"], task["seed"]
    config = SearchConfig(space=SPACE, latency_budget_ms=task["budget_ms"], lut_path=s["lut"], dataset=s["data"],
                          resolution=RESOLUTION, strategy=task["strategy"], seed=seed, trials=s["trials"],
                          train=train_config(s["epochs"], seed, s["batch_size"]), train_limit=s["train_limit"])
    run_dir = Path(task["run_dir"])
    RunDirectory(run_dir).clear()  # a benchmark run always starts afresh
    start = time.perf_counter()
    summary = run_search(config, run_dir, progress=False)
    out: dict[str, Any] = {"search_wall_s": time.perf_counter() - start, "search_elapsed_s": summary.elapsed_s,
                           "trials": summary.trials, "ok": summary.ok, "failed": summary.failed,
                           "infeasible": summary.infeasible}
    records = RunDirectory(run_dir).read_trials()
    out["feasible"] = sum(1 for r in records if r.get("feasible"))
    out["trial_log"] = [{"trial_id": r["trial_id"], "status": r["result"]["status"], "feasible": r.get("feasible"),
                         "val_accuracy": r["result"].get("accuracy"), "latency_ms": r["result"].get("latency_ms"),
                         "train_time_s": r["result"].get("train_time_s")} for r in records]
    times = [t["train_time_s"] for t in out["trial_log"] if t["status"] == "ok" and t["train_time_s"]]
    out["mean_trial_s"] = statistics.fmean(times) if times else None
    if summary.best is None:
        return out
    best = summary.best
    arch = ArchSpec.from_dict(best["candidate"]["arch"])
    out.update(best_trial=best["trial_id"], best_val_accuracy=best["result"]["accuracy"],
               predicted_ms=best["result"]["latency_ms"], blocks=best["blocks"], arch=arch.to_dict())
    table = open_table(config, get_space(SPACE, resolution=RESOLUTION, num_classes=CLASSES))
    out["final"] = final_train(s, arch, seed, table)
    return out


def zoo_task(task: dict[str, Any]) -> dict[str, Any]:
    from search_spaces.spec import ArchSpec

    return {"final": final_train(task["settings"], ArchSpec.from_dict(task["arch"]), task["seed"])}


def run_worker(path: Path) -> None:
    import torch

    torch.set_num_threads(1)  # one core per job: the pool runs --jobs of them side by side
    task = json.loads(path.read_text())
    if task["kind"] == "ray":
        s = task["settings"]
        result = ray_task(task, SPACE, RESOLUTION, train_config(s["ray_epochs"], 0, s["batch_size"]))
    else:
        result = {"search": search_task, "zoo": zoo_task}[task["kind"]](task)
    path.with_name(path.name.replace(".task.json", ".result.json")).write_text(json.dumps(result, indent=1))


# -- main-process phases ----------------------------------------------------------------------------

def ensure_table(args: argparse.Namespace, space: Any) -> tuple[Any, str]:
    from predictors.latency import LatencyTable, build_table, validate_table

    if args.lut.is_file():
        table = LatencyTable.load(args.lut)
        table.check_fits(space=SPACE, resolution=RESOLUTION, num_classes=CLASSES, source=str(args.lut))
        return table, "existing"
    logger.info("%s absent: building it (onnxruntime, 1 thread)", args.lut)
    measurer = make_measurer("onnxruntime", 1, args.measure)
    table = build_table(space, measurer, args.lut, show_progress=True)
    if args.calibrate_samples:
        # so that predictions are in end-to-end milliseconds, like the zoo's measured latencies
        validate_table(table, space, measurer, samples=args.calibrate_samples, seed=0)
        table.save(args.lut)
    return table, "built by this run"


def choose_budget(args: argparse.Namespace, space: Any, table: Any) -> tuple[float, str]:
    if args.budget_ms is not None:
        return args.budget_ms, "given (--budget-ms)"
    rng = np.random.default_rng(0)
    predicted = [table.predict(space.sample(rng)) for _ in range(args.budget_samples)]
    budget = round(float(np.quantile(predicted, args.budget_quantile)), 4)
    return budget, (f"{args.budget_quantile:.0%} quantile of the table-predicted latency of {args.budget_samples:,} "
                    f"architectures sampled from the space (seed 0; median {np.median(predicted):.3f} ms)")


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
    lines += ["", f"Raw numbers: `{r['results_shown']}`; run directories and task logs beside it."]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("predictors.latency.measure").setLevel(logging.WARNING)  # per-item retry chatter
    if args.worker is not None:
        run_worker(args.worker)
        return
    import torch

    from search_spaces.space import get_space

    torch.set_num_threads(1)
    started, phases = time.perf_counter(), {}
    load_at_start = os.getloadavg()[0]  # the figures assume a quiet machine: record how quiet it was
    args.out, args.lut = args.out.resolve(), args.lut.resolve()  # workers run from the repository root
    kind, colon, where = args.data.partition(":")
    if colon and kind in ("cifar10", "imagefolder"):
        args.data = f"{kind}:{Path(where).resolve()}"
    args.out.mkdir(parents=True, exist_ok=True)
    space = get_space(SPACE, resolution=RESOLUTION, num_classes=CLASSES)
    table, lut_state = ensure_table(args, space)
    phases["lut_s"] = time.perf_counter() - started
    budget, budget_how = choose_budget(args, space, table)
    logger.info("budget %.4f ms: %s", budget, budget_how)
    backend, threads = str(table.metadata.get("backend", "onnxruntime")), int(table.metadata.get("threads", 1))
    measurer = make_measurer(backend, threads, args.measure)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"}

    mark = time.perf_counter()
    zoo_fits = {} if args.skip_zoo else fit_zoo(args.zoo, RESOLUTION, CLASSES, budget, measurer,
                                                 args.width_range, args.bisect_steps)
    phases["zoo_fit_s"] = time.perf_counter() - mark

    # searches first (the long tasks), zoo retrainings fill the slots they leave
    tasks = [{"kind": "search", "name": f"{strategy}-s{seed}", "strategy": strategy, "seed": seed, "budget_ms": budget,
              "run_dir": str(args.out / "runs" / f"{strategy}-s{seed}"), "settings": settings}
             for seed in args.seeds for strategy in args.strategies]
    tasks += [{"kind": "zoo", "name": f"zoo-{name}-s{seed}", "model": name, "seed": seed, "arch": fit["arch"],
               "settings": settings} for seed in args.seeds for name, fit in zoo_fits.items()]
    mark = time.perf_counter()
    results = run_pool(Path(__file__), tasks, args.jobs, args.out / "tasks")
    phases["train_s"] = time.perf_counter() - mark
    strategies = {t["name"]: {"strategy": t["strategy"], "seed": t["seed"], **results[t["name"]]}
                  for t in tasks if t["kind"] == "search"}
    zoo_rows = {t["name"]: {"model": t["model"], "seed": t["seed"], **results[t["name"]]}
                for t in tasks if t["kind"] == "zoo"}

    mark = time.perf_counter()
    finals = {name: row["arch"] for name, row in strategies.items() if "arch" in row}
    finals.update({f"zoo-{name}": fit["arch"] for name, fit in zoo_fits.items()})
    measured = measure_finals(finals, measurer)
    phases["measure_s"] = time.perf_counter() - mark

    ray: dict[str, Any] = {}
    if not args.skip_ray:
        mark = time.perf_counter()
        ray_tasks = [{"kind": "ray", "name": f"ray-w{w}", "workers": w, "budget_ms": budget,
                      "run_dir": str(args.out / "runs" / f"ray-w{w}"), "settings": settings} for w in args.workers_ray]
        ray = {name: {"workers": int(name[5:]), **row} for name, row in run_pool(Path(__file__), ray_tasks, 1, args.out / "tasks").items()}
        phases["ray_s"] = time.perf_counter() - mark
    phases["total_s"] = time.perf_counter() - started

    calibration = (f"calibrated: {table.calibration}"
                   if table.calibration else "raw per-op sums, no calibration: predicted and measured ms may differ")
    results_path = args.out / "results.json"
    report = {"settings": settings, "budget_ms": budget, "budget_how": budget_how, "lut_state": lut_state,
              "lut_backend": backend, "lut_threads": threads, "load_at_start": load_at_start, "lut_calibration": calibration, "phases": phases,
              "strategies": strategies, "zoo_fits": zoo_fits, "zoo": zoo_rows, "measured": measured, "ray": ray,
              "lut_shown": _shown(args.lut), "results_shown": _shown(results_path)}
    results_path.write_text(json.dumps(report, indent=1, default=str))
    body = render(report)
    print(body)
    if not args.no_write:
        update_section("search_quality", "Search quality on CIFAR-10 (subset)", body)


if __name__ == "__main__":
    main()
