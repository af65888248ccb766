"""Run benchmark tasks (JSON files) in subprocesses, a few at a time, each with one OpenMP thread:
the script given re-runs itself with ``--worker TASK.task.json`` and writes ``TASK.result.json``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.task_pool")


def run_pool(script: Path, tasks: list[dict[str, Any]], jobs: int, folder: Path) -> dict[str, dict[str, Any]]:
    """Run tasks in `jobs` subprocesses at a time, in order; a failed task is a result with an error."""
    folder.mkdir(parents=True, exist_ok=True)
    repo = script.resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    pending, running, results = list(tasks), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                path = folder / f"{task['name']}.task.json"
                path.write_text(json.dumps(task, indent=1))
                path.with_name(path.name.replace(".task.json", ".result.json")).unlink(missing_ok=True)  # stale
                log = (folder / f"{task['name']}.log").open("w")
                process = subprocess.Popen([sys.executable, str(script.resolve()), "--worker", str(path)],
                                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repo)
                running[task["name"]] = (process, time.perf_counter(), path, log)
                logger.info("started %s (pid %d)", task["name"], process.pid)
            time.sleep(0.5)
            for name, (process, start, path, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                result_path = path.with_name(path.name.replace(".task.json", ".result.json"))
                if process.returncode == 0 and result_path.is_file():
                    results[name] = json.loads(result_path.read_text())
                else:
                    results[name] = {"error": f"exit code {process.returncode}; see {folder / (name + '.log')}"}
                results[name]["task_wall_s"] = time.perf_counter() - start
                logger.info("finished %s in %.0fs%s", name, results[name]["task_wall_s"],
                            f" ({results[name]['error']})" if "error" in results[name] else "")
    finally:
        for process, *_ in running.values():  # only our own children, by their handles
            process.terminate()
    return results
