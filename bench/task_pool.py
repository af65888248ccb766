"""Run benchmark tasks (JSON files) in subprocesses, a few at a time, each with one torch/OpenMP
thread: `python -m MODULE --worker TASK.task.json` reads the task and writes TASK.result.json
(`work` is that side)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.task_pool")
REPO = Path(__file__).resolve().parents[1]


def _result_path(task_path: Path) -> Path:
    return task_path.with_name(task_path.name.replace(".task.json", ".result.json"))


def work(task_path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The worker side: one task file in, `handler`'s result in the result file beside it."""
    import torch

    torch.set_num_threads(1)  # one core per job: the pool runs `jobs` of them side by side
    result = handler(json.loads(task_path.read_text()))
    _result_path(task_path).write_text(json.dumps(result, indent=1))


def run_pool(module: str, tasks: list[dict[str, Any]], jobs: int, folder: Path) -> dict[str, dict[str, Any]]:
    """Run tasks in `jobs` subprocesses at a time, in order; a failed task is a result with an error."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    pending, running, results = list(tasks), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                path = folder / f"{task['name']}.task.json"
                path.write_text(json.dumps(task, indent=1))
                _result_path(path).unlink(missing_ok=True)  # stale
                log = (folder / f"{task['name']}.log").open("w")
                process = subprocess.Popen([sys.executable, "-m", module, "--worker", str(path)],
                                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
                running[task["name"]] = (process, time.perf_counter(), path, log)
                logger.info("started %s (pid %d)", task["name"], process.pid)
            time.sleep(0.5)
            for name, (process, start, path, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                if process.returncode == 0 and _result_path(path).is_file():
                    results[name] = json.loads(_result_path(path).read_text())
                else:
                    results[name] = {"error": f"exit code {process.returncode}; see {folder / (name + '.log')}"}
                results[name]["task_wall_s"] = time.perf_counter() - start
                logger.info("finished %s in %.0fs%s", name, results[name]["task_wall_s"],
                            f" ({results[name]['error']})" if "error" in results[name] else "")
    finally:
        for process, *_ in running.values():  # only our own children, by their handles
            process.terminate()
    return results
