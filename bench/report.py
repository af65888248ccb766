"""Publishes a benchmark's results: its own section of BENCHMARKS.md, between markers, so each
benchmark can be re-run on its own without disturbing the others' figures, and the raw numbers
behind it in bench/results/<name>.json. Both carry the same command, commit, date and machine."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "BENCHMARKS.md"
RESULTS = REPO / "bench" / "results"
HEADER = "# Benchmarks\n\nEvery figure below was measured by the script named in its section, with the command shown.\n"
# the instruction sets whose kernels onnxruntime and torch pick at run time: the same code runs
# several times faster on a CPU that has them, so a figure means little without them
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile")


def results_path(name: str) -> str:
    """Where `publish` writes `name`'s raw numbers, as a section shows it."""
    return (RESULTS / f"{name}.json").relative_to(REPO).as_posix()


def omit(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`mapping` without `keys`: what a results file leaves out to stay small enough to commit."""
    return {key: value for key, value in mapping.items() if key not in keys}


def _cpu() -> tuple[str, list[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU", []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return model, [flag for flag in SPEED_FLAGS if flag in flags]


def machine_line() -> str:
    cpu, flags = _cpu()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{cpu} ({' '.join(flags) or 'no AVX2'}), {os.cpu_count()} logical cores, Python "
            f"{platform.python_version()}, load average {load} when written")


def _provenance(name: str, module: str | None = None) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO).stdout.strip()
    except OSError:
        commit = "?"
    return {"command": " ".join(["python -m", f"bench.{module or name}", *sys.argv[1:]]), "commit": commit,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_line()}


def publish(name: str, title: str, body: str, results: dict[str, Any], module: str | None = None) -> None:
    """Write section `name` of BENCHMARKS.md (`title`, then `body`) and bench/results/<name>.json;
    `module` is the benchmark's module when one module writes several sections (default: `name`)."""
    stamp = _provenance(name, module)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**stamp, "results": results}, indent=1, default=str) + "\n")
    section = (f"<!-- bench:{name} -->\n## {title}\n\n`{stamp['command']}` — {stamp['date']}, commit "
               f"{stamp['commit']}; {stamp['machine']}.\n\n{body.strip()}\n<!-- /bench:{name} -->")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)


# -- what the sections are written with -------------------------------------------------------------

def fmt(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
