"""The Ray runner's throughput for `bench.search_quality`: one random search on embedded Ray at a
given worker count, and its part of the section. search_quality runs each as a task of its pool:
`python -m bench.ray_throughput --worker TASK.task.json`, alone on the machine."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.report import fmt, md_table
from bench.task_pool import work
from nas.search.config import SearchConfig


def ray_task(task: dict[str, Any]) -> dict[str, Any]:
    """Random search on the Ray runner. Times are taken from the call of `run_search`: the first
    trial's result therefore includes table and data loading, Ray start-up, Tune's trial launch
    and one trial's training; trials.jsonl's `finished_at` stamps give the rest."""
    from nas.rundir.files import RunDirectory
    from nas.search.runner import run_search
    from nas.training import recipe

    s, workers = task["settings"], task["workers"]
    train = recipe("proxy", epochs=s["ray_epochs"], batch_size=s["batch_size"], seed=SearchConfig.seed)
    config = SearchConfig(space=task["space"], latency_budget_ms=task["budget_ms"], lut_path=s["lut"],
                          dataset=s["data"], resolution=task["resolution"], strategy="random", trials=s["ray_trials"],
                          train=train, train_limit=s["ray_train_limit"], ray=True, workers=workers)
    run_dir = Path(task["run_dir"])
    RunDirectory(run_dir).clear()
    # a short temp dir of our own: otherwise the runner makes one per run under /tmp and leaves it there
    os.environ["RAY_TMPDIR"] = temp = tempfile.mkdtemp(prefix="hwnas-bench-ray-")
    started = time.time()
    try:
        summary = run_search(config, run_dir, progress=False)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    wall = time.time() - started
    trained = [r for r in RunDirectory(run_dir).read_trials() if r.executor == "ray"]
    ends = sorted(datetime.fromisoformat(r.finished_at).timestamp() - started for r in trained)
    times = [r.result.train_time_s for r in trained if r.result.train_time_s]
    # steady state: from every worker's first result on (they start together and finish about together)
    k = min(workers, len(ends)) - 1
    steady = (len(ends) - 1 - k) / (ends[-1] - ends[k]) * 3600 if len(ends) > k + 1 and ends[-1] > ends[k] else None
    return {"workers": workers, "trials": summary.trials, "trained": len(trained), "ok": summary.ok, "wall_s": wall,
            "first_result_s": ends[0] if ends else None, "mean_trial_s": statistics.fmean(times) if times else None,
            "trials_per_hour": len(trained) / wall * 3600, "steady_per_hour": steady}


def ray_section(a: dict[str, Any], ray: dict[str, Any]) -> list[str]:
    lines = ["", (f"Ray runner (embedded local Ray, `cpus_per_trial={SearchConfig.cpus_per_trial:g}`): random strategy, {a['ray_trials']} trials of "
             f"{a['ray_epochs']} epoch(s) on {a['ray_train_limit']} images (batch {a['batch_size']}), nothing else of the benchmark running. "
             "Clock from the `run_search` call: the first result includes table and data loading, Ray start-up, "
             "Tune's trial launch and one trial's training; *steady* = trials finished after every worker's first "
             "result, divided by the time from that result to the last (start-up excluded).")]
    rows = [[str(row.get("workers")), row["error"]] + ["—"] * 5 if "error" in row else
            [str(row["workers"]), str(row["trained"]), f"{row['wall_s']:.0f} s", fmt(row["first_result_s"], ".0f", " s"),
             fmt(row["mean_trial_s"], ".1f", " s"), f"{row['trials_per_hour']:.0f}", fmt(row["steady_per_hour"], ".0f")]
            for row in ray.values()]
    lines += md_table(["workers", "trials trained", "wall", "first result after", "mean trial train time",
                       "trials/hour", "trials/hour steady"], rows)
    rates = {row["workers"]: row for row in ray.values() if "error" not in row}
    if 1 in rates and 2 in rates:
        one, two = rates[1], rates[2]
        text = f"2 vs 1 workers: {two['trials_per_hour'] / one['trials_per_hour']:.2f}x trials/hour over the whole run"
        if one["steady_per_hour"] and two["steady_per_hour"]:
            text += f", {two['steady_per_hour'] / one['steady_per_hour']:.2f}x steady"
        lines += ["", text + "."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, required=True, help="A task file written by search_quality.")
    work(parser.parse_args(argv).worker, ray_task)


if __name__ == "__main__":
    main()
