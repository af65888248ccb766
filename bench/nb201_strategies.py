"""Every ask/tell strategy on NAS-Bench-201 with real device latencies, on many seeds.

A trial is a lookup in the shared NB201 table (`predictors.tabular`), so a strategy can be judged
on hundreds of seeds: each run is `nas.search.memory.run_in_memory` (the strategy built and
driven exactly as `nas search` does, trials evaluated by the same `evaluate_candidate`, no run
directory). Setting = data set x latency model x budget; the budget is a quantile of the latency
of the *connected* cells (the 341 disconnected cells have no usable latency: the latency model
refuses them, so they are never feasible). The oracle observes the 200-epoch test accuracy.

Regret after n queries = best test accuracy among the setting's feasible cells - best test
accuracy among the feasible trials of the first n (percentage points); a query is a trial (a
strategy's pre-check rejections, which cost no trial, are not queries). Overhead = seconds the
searcher spends in ask + tell per query (the lookup itself is reported apart).

Each (setting, strategy, seed, queries) run is cached as one JSON file under --out, so the grid
can be run in pieces (`--time-limit` stops handing out runs; re-running resumes) and the section
is written from whatever the cache holds, stating the seeds and queries behind every figure.

    python -m bench.nb201_strategies                         # the plan below, then publish
    python -m bench.nb201_strategies --plan headline --seeds 3 --no-write         # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.nb201_runs import CHECKPOINTS, key_of, run_one, setting_facts
from bench.report import REPO, fmt, md_table, publish, results_path

logger = logging.getLogger("bench.nb201_strategies")
NAME = "nb201_strategies"
STRATEGIES = ("random", "evolution", "mnas-rl", "tpe", "nsga2", "local", "bananas", "proxy-warm", "proxy-warm:nwot",
              "band-screen", "band-screen:nwot", "successive-halving", "successive-halving:nwot")
# `proxy-warm:<proxy>`, `band-screen:<proxy>`: ranking by NAS-Bench-Suite-Zero's published CIFAR-10
# score of that proxy (nb201_zc.csv, 9,445 cells; a cell without one ranks last), not by #params;
# on the CIFAR-100 and ImageNet16-120 settings too (the ranking of cells, not the data, carries over)
HEADLINE = ("cifar10", "hwnasbench:pixel3", 0.3)
# what the issue measured for random search at HEADLINE (200 seeds): budget, feasible, best, regret
ISSUE_BASELINE = {"budget_ms": 7.95, "feasible": 4585, "best": 93.63, "regret": (2.57, 1.66, 0.90, 0.64)}


@dataclass(frozen=True)
class Block:
    """Runs of some strategies on some settings: `seeds` seeds of `queries` queries each."""

    settings: tuple[tuple[str, str, float], ...]
    strategies: tuple[str, ...]
    seeds: int
    queries: int


def grid(datasets: tuple[str, ...], lats: tuple[str, ...], quantiles: tuple[float, ...]) -> tuple:
    return tuple((d, m, q) for d in datasets for m in lats for q in quantiles)


DATASETS = ("cifar10", "cifar100", "imagenet16")
DEVICES = ("hwnasbench:pixel3", "hwnasbench:raspi4", "hwnasbench:edgegpu")
QUANTILES = (0.1, 0.3, 0.6)
# one change at a time from HEADLINE: data set, device, budget
OTHERS = (grid(("cifar100", "imagenet16"), ("hwnasbench:pixel3",), (0.3,))
          + grid(("cifar10",), ("hwnasbench:raspi4", "hwnasbench:edgegpu"), (0.3,))
          + grid(("cifar10",), ("hwnasbench:pixel3",), (0.1, 0.6)))
# Plans, in priority order (runs are handed out block by block, seed-major inside a block, so a
# time limit leaves every strategy of a block with about as many seeds). Sized from the cost of
# one 300-query run measured on this 2-core VM under load ~14 (other jobs): random 1.4 s,
# evolution 7.8 s, mnas-rl 24 s (1 torch thread), nsga2 57 s, tpe ~170 s (Optuna's samplers
# re-read the whole study, which also holds the rejected suggestions, at every ask).
PLANS: dict[str, tuple[Block, ...]] = {
    "full": (Block(grid(DATASETS, DEVICES, QUANTILES), STRATEGIES, 100, 300),),
    "headline": (Block((HEADLINE,), STRATEGIES, 100, 300),),
    # what fits in ~50 min on this VM: priority blocks, seed-major, cut by --time-limit; the
    # section states the seeds and queries behind every figure
    "fits": (
        # the default strategy of #14 and multi-fidelity (#13): drawing band-screen's in-band pool makes
        # a run several seconds here, so fewer seeds than random's
        Block((HEADLINE,), ("band-screen:nwot", "successive-halving", "successive-halving:nwot"), 30, 100),
        Block(OTHERS, ("band-screen:nwot",), 10, 100),
        Block((HEADLINE,), ("band-screen",), 30, 100),
        Block((HEADLINE,), ("local", "bananas", "proxy-warm"), 30, 100),  # the strategies of #13 step 5
        Block((HEADLINE,), ("proxy-warm:nwot",), 30, 100),
        Block((HEADLINE,), ("random",), 200, 300),
        Block((HEADLINE,), ("evolution", "mnas-rl"), 30, 300),
        Block((HEADLINE,), ("nsga2", "tpe"), 10, 100),
        Block(OTHERS, ("random", "evolution", "mnas-rl"), 10, 100),
        Block((HEADLINE,), ("nsga2", "tpe"), 30, 100),
        Block((HEADLINE,), ("evolution", "mnas-rl"), 100, 300),
        Block((HEADLINE,), ("nsga2", "tpe"), 100, 100),
        Block(OTHERS, ("random", "evolution", "mnas-rl"), 30, 100),
        Block((HEADLINE,), ("nsga2", "tpe"), 100, 300),
    ),
}


# -- the cache ---------------------------------------------------------------------------------------
def run_path(out: Path, setting: tuple[str, str, float], strategy: str, seed: int, queries: int) -> Path:
    return out / key_of(setting) / strategy / f"q{queries}_s{seed}.json"


def cached(out: Path, setting: tuple[str, str, float], strategy: str) -> list[dict[str, Any]]:
    """Every cached run of a strategy on a setting, longest queries first per seed (one per seed)."""
    folder = out / key_of(setting) / strategy
    runs: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("q*_s*.json")) if folder.is_dir() else []:
        run = json.loads(path.read_text())
        if run["seed"] not in runs or run["queries"] > runs[run["seed"]]["queries"]:
            runs[run["seed"]] = run
    return [runs[seed] for seed in sorted(runs)]


def tasks_of(plan: tuple[Block, ...], out: Path, seeds: int | None) -> list[tuple]:
    tasks, seen = [], set()
    for block in plan:
        for seed in range(seeds if seeds is not None else block.seeds):
            for setting in block.settings:
                for strategy in block.strategies:
                    task = (setting, strategy, seed, block.queries)
                    if task in seen or run_path(out, *task).is_file():
                        continue
                    seen.add(task)
                    tasks.append(task)
    return tasks


def run_tasks(tasks: list[tuple], out: Path, jobs: int, time_limit_s: float | None) -> int:
    """Run `tasks` on `jobs` processes, each result cached as it arrives; after `time_limit_s`
    no further task is started (those running finish). Returns how many finished."""
    started, done = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending, queue = set(), list(tasks)

        def submit() -> None:
            while queue and len(pending) < 2 * jobs:
                if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                    queue.clear()
                    return
                task = queue.pop(0)
                future = pool.submit(run_one, *task)
                future.task = task  # type: ignore[attr-defined]
                pending.add(future)

        submit()
        while pending:
            future = next(as_completed(pending))
            pending.discard(future)
            result = future.result()
            path = run_path(out, *future.task)  # type: ignore[attr-defined]
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(result))
            os.replace(temporary, path)
            done += 1
            if done % 50 == 0:
                logger.info("%d runs done, %d queued, %.0f s", done, len(queue), time.perf_counter() - started)
            submit()
    return done


# -- figures -------------------------------------------------------------------------------------------
def summarise(out: Path, setting: tuple[str, str, float], strategy: str) -> dict[str, Any] | None:
    runs = cached(out, setting, strategy)
    if not runs:
        return None
    facts = setting_facts(setting)
    queries = min(run["queries"] for run in runs)
    # regret per seed and query; a query before any feasible trial has no best yet (counted as 0 %)
    curves = np.array([[facts["best"] - (value if value is not None else 0.0) for value in run["curve"][:queries]]
                       for run in runs])
    n = len(runs)
    mean, std = curves.mean(axis=0), curves.std(axis=0, ddof=1) if n > 1 else np.zeros(queries)
    at = {}
    for q in CHECKPOINTS:
        if q <= queries:
            column = curves[:, q - 1]
            at[str(q)] = {"mean": float(column.mean()), "std": float(column.std(ddof=1)) if n > 1 else 0.0,
                          "median": float(np.median(column)), "found_best": float(np.mean(column <= 1e-9))}
    total = sum(run["queries"] for run in runs)
    return {"seeds": n, "queries": queries, "regret_at": at,
            "mean_curve": [round(float(v), 4) for v in mean], "std_curve": [round(float(v), 4) for v in std],
            "overhead_ms_per_query": 1e3 * sum(run["ask_tell_s"] for run in runs) / total,
            "lookup_ms_per_query": 1e3 * sum(run["evaluate_s"] for run in runs) / total,
            "wall_s_per_run": sum(run["wall_s"] for run in runs) / n,
            "infeasible_per_run": sum(run["infeasible"] for run in runs) / n,
            "unique_per_run": sum(run["unique"] for run in runs) / n}


def plot(summaries: dict[str, dict[str, Any]], facts: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for index, (strategy, summary) in enumerate(summaries.items()):
        mean, std = np.array(summary["mean_curve"]), np.array(summary["std_curve"])
        x = np.arange(1, len(mean) + 1)
        half = 1.96 * std / math.sqrt(summary["seeds"])  # 95% confidence band of the mean
        style = "-" if index < 10 else "--"  # the colour cycle has 10 colours
        ax.plot(x, mean, style, label=f"{strategy} ({summary['seeds']} seeds)")
        ax.fill_between(x, np.maximum(mean - half, 1e-3), mean + half, alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries (full trainings; a 12-epoch answer counts 12/200)")
    ax.set_ylabel("regret (test-accuracy points)")
    ax.set_title(f"{title}: budget {facts['budget_ms']:.2f} ms, {facts['feasible']:,} feasible, "
                 f"best {facts['best']:.2f}%", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def all_settings() -> list[tuple[str, str, float]]:
    settings: list[tuple[str, str, float]] = []
    for plan in PLANS.values():
        for block in plan:
            settings += [s for s in block.settings if s not in settings]
    return settings


def shown(path: Path) -> str:
    return os.path.relpath(path, REPO)


def section(out: Path, figures_dir: Path) -> tuple[str, dict[str, Any]]:
    results: dict[str, Any] = {}
    rows, overhead_rows = [], []
    headline_figure = None
    for setting in all_settings():
        summaries = {s: summary for s in STRATEGIES if (summary := summarise(out, setting, s)) is not None}
        if not summaries:
            continue
        facts = setting_facts(setting)
        key = key_of(setting)
        results[key] = {"budget_ms": facts["budget_ms"], "feasible": facts["feasible"], "best": facts["best"],
                        "uniform_regret_exact": facts["uniform_regret"],
                        "strategies": {s: {k: v for k, v in summary.items() if k not in ("mean_curve", "std_curve")}
                                       | {"mean_curve_at": {str(q): summary["mean_curve"][q - 1]
                                                            for q in (1, 3, 10, 30, 100, 200, 300)
                                                            if q <= summary["queries"]}}
                                       for s, summary in summaries.items()}}
        figure = figures_dir / f"{NAME}_{key}.png"
        plot(summaries, facts, key, figure)
        if setting == HEADLINE:
            headline_figure = figure
        label = (f"{setting[0]} / {setting[1].split(':')[1]} / {round(100 * setting[2])}% "
                 f"({facts['budget_ms']:.2f} ms, {facts['feasible']:,}, {facts['best']:.2f})")
        rows.append([label, "uniform, exact", "∞", *(f"{facts['uniform_regret'][str(q)]:.2f}" for q in CHECKPOINTS)])
        for strategy, summary in summaries.items():
            cells = []
            for q in CHECKPOINTS:
                value = summary["regret_at"].get(str(q))
                cells.append("—" if value is None else f"{value['mean']:.2f} ± {value['std']:.2f}")
            rows.append([label, strategy, str(summary["seeds"]), *cells])
            overhead_rows.append([key, strategy, str(summary["seeds"]), str(summary["queries"]),
                                  fmt(summary["overhead_ms_per_query"], ".2f"),
                                  fmt(summary["lookup_ms_per_query"], ".3f"), fmt(summary["wall_s_per_run"], ".1f"),
                                  fmt(summary["unique_per_run"], ".0f")])
    head = results.get(key_of(HEADLINE), {}).get("strategies", {}).get("random")
    check = []
    if head:
        ours = [head["regret_at"].get(str(q), {}).get("mean") for q in CHECKPOINTS]
        facts = setting_facts(HEADLINE)
        check = ["", f"Oracle check against the issue's baseline (random search, CIFAR-10 / Pixel 3 / 30%): budget "
                 f"{facts['budget_ms']:.2f} ms (issue {ISSUE_BASELINE['budget_ms']}), {facts['feasible']:,} feasible "
                 f"(issue {ISSUE_BASELINE['feasible']:,}), best {facts['best']:.3f}% (issue {ISSUE_BASELINE['best']}); "
                 f"random's mean regret {' / '.join(fmt(v, '.2f') for v in ours)} after 10 / 30 / 100 / 300 queries on "
                 f"{head['seeds']} seeds; the exact expectation of uniform draws without repeats from the feasible "
                 f"cells (no sampling noise) is {' / '.join(f'{v:.2f}' for v in facts['uniform_regret'].values())}; "
                 f"the issue's figure (200 seeds) was {' / '.join(f'{v:.2f}' for v in ISSUE_BASELINE['regret'])}."]
    cost = []
    head_runs = results.get(key_of(HEADLINE), {}).get("strategies", {})
    if head_runs:
        per_seed = {s: v["wall_s_per_run"] * 300 / v["queries"] for s, v in head_runs.items()}
        grid_s = sum(per_seed.values()) * 100 * len(DATASETS) * len(DEVICES) * len(QUANTILES)
        cost = ["", "What ran, and why not the whole grid: one 300-query run per strategy costs here (wall s per run "
                "on one of 2 jobs, scaled linearly to 300 queries where fewer ran; the Optuna strategies grow "
                "faster than linearly, so theirs are low) " + ", ".join(f"{s} {v:.0f} s" for s, v in per_seed.items())
                + f"; the full grid ({len(STRATEGIES)} strategies x 100 seeds x {len(DATASETS)} data sets x "
                f"{len(DEVICES)} devices x {len(QUANTILES)} budgets x 300 queries) would take at least "
                f"{grid_s / 3600:.0f} job-hours, far over 30 minutes. So the run was the `fits` plan: the headline "
                "setting first (random on 200 seeds, the others on as many seeds as the table shows; NSGA-II and "
                "TPE, the costliest, at 100 queries), then one change at a time from it (data set, device, budget) "
                "for random, evolution and mnas-rl at 100 queries on few seeds, cut by `--time-limit`. The seeds "
                "and queries behind every figure are in the table."]
    body = "\n".join([
        "Every ask/tell strategy on NAS-Bench-201 (`--dataset nb201:<ds> --lut hwnasbench:<device>`), driven in "
        "memory by `nas.search.memory.run_in_memory` (the strategies as `nas search` builds them, trials answered "
        "by the same `evaluate_candidate` from the shared NB201 table; no run directory). The oracle observes "
        "the 200-epoch test accuracy. Budget: the quantile of the device latency over the 15,284 connected cells "
        "(the 341 disconnected cells have degenerate latencies: the latency model refuses them, so they are never "
        "feasible). Regret = best feasible test accuracy − best test accuracy among the feasible trials so far, "
        "in points, mean ± standard deviation over seeds; a query is a trial (pre-check rejections cost none).",
        *check,
        *cost,
        "",
        "Regret after 10 / 30 / 100 / 300 queries (setting: data set / device / budget quantile (budget, "
        "feasible cells, best feasible %)); `uniform, exact` is the exact expectation of uniform draws without "
        "repeats from the feasible cells (what `random` does, with no sampling noise); — where the runs were shorter:",
        *md_table(["setting", "strategy", "seeds", "10", "30", "100", "300"], rows),
        "",
        "Cost per query (ms, this VM under the load above): the searcher's own ask + tell (its overhead), the "
        "table lookup (the trial), wall time per run, distinct architectures per run:",
        *md_table(["setting", "strategy", "seeds", "queries", "ask+tell ms/query", "lookup ms/query", "s/run",
                   "unique archs"], overhead_rows),
        "",
        f"Curves (mean, 95% confidence band of the mean, log-log): `{shown(figures_dir)}/"
        f"{NAME}_<setting>.png`" + (f", headline `{shown(headline_figure)}`" if headline_figure
                                      else "") + f"; raw numbers: `{results_path(NAME)}`.",
    ])
    return body, results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--plan", choices=list(PLANS), default="fits", help="Which runs (see PLANS); `full` is the whole grid.")
    add("--seeds", type=int, default=None, help="Override every block's seed count (smoke tests).")
    add("--jobs", type=int, default=2)
    add("--time-limit", type=float, default=None, help="Minutes after which no further run is started.")
    add("--out", type=Path, default=REPO / "runs/bench/nb201_strategies", help="Run cache (resumable).")
    add("--figures", type=Path, default=REPO / "bench/results", help="Where the PNG curves go.")
    add("--report-only", action="store_true", help="Publish from the cache without running anything.")
    add("--no-write", action="store_true", help="Do not publish (BENCHMARKS.md, bench/results/).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    if not args.report_only:
        tasks = tasks_of(PLANS[args.plan], args.out, args.seeds)
        logger.info("%d runs to do (plan %s)", len(tasks), args.plan)
        done = run_tasks(tasks, args.out, args.jobs, None if args.time_limit is None else 60 * args.time_limit)
        logger.info("%d runs in %.0f s", done, time.perf_counter() - started)
    args.figures.mkdir(parents=True, exist_ok=True)
    body, results = section(args.out, args.figures)
    print(body)
    if not args.no_write:
        publish(NAME, "NAS-Bench-201: strategies under real device latency budgets", body, results)


if __name__ == "__main__":
    main()
