"""Measure again, end to end and interleaved, the final networks of the last `bench.search_quality`
run (its `report.json`): a second look when the run's own measurement found the machine busy.

    python -m bench.search_quality_measure --repeats 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.baselines import measure_finals
from bench.report import REPO


def main(argv: list[str] | None = None) -> None:
    import torch

    from predictors.latency import LocalMeasurer, MeasureSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPO / "runs/bench/search_quality/report.json")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure", default="10,15,10")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = json.loads(args.report.read_text())
    archs = {key: row["arch"] for key, row in report["searches"].items() if "arch" in row}
    archs.update({f"zoo-{key}": fit["arch"] for key, fit in report["zoo_fits"].items()})
    measurer = LocalMeasurer("onnxruntime", threads=1, settings=MeasureSettings.parse(args.measure))
    for _ in range(args.repeats):
        found = measure_finals(archs, measurer)
        print(json.dumps({key: round(value["median_ms"], 3) for key, value in found.items()}))


if __name__ == "__main__":
    main()
