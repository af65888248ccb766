"""Training speed with a second job on the machine: torch's default threads vs the fair share.

Run it while another CPU-bound job runs (here: `python -m bench.toolbox`, 2 torch threads) to
see what a new user sees. Each round trains the same network for a fixed number of steps with
torch's default thread count and with `nas.training.threads.fair_threads()`, alternating, and
reports images/s per round, medians and the ratio.

    python -m bench.threads --rounds 3 --steps 30     # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.report import md_table, publish
from nas.training import load_dataset
from nas.training.threads import available_cpus, fair_threads
from predictors.latency.machine_load import OtherLoad
from search_spaces.build import build_model
from search_spaces.spaces import get_space


def images_per_s(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        index = torch.arange(step * batch, (step + 1) * batch) % len(images)
        optimizer.zero_grad()
        loss_fn(model(images[index]), labels[index]).backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    data = load_dataset("digits", 32, seed=0)
    images, labels = data.train.tensors[:2]
    space = get_space("mnasnet", resolution=32, num_classes=data.num_classes)
    torch.manual_seed(0)
    model = build_model(space.sample(np.random.default_rng(0)))
    default_threads = torch.get_num_threads()
    rows: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        fair = fair_threads()
        for label, threads in (("default", default_threads), ("fair", fair)):
            torch.set_num_threads(threads)
            with OtherLoad() as load:
                speed = images_per_s(model, images, labels, args.steps, args.batch)
            rows.append({"round": round_index, "setting": label, "threads": threads, "images_per_s": speed,
                         "other_load_cores": load.cores})
            print(rows[-1], flush=True)
    medians = {label: statistics.median(r["images_per_s"] for r in rows if r["setting"] == label)
               for label in ("default", "fair")}
    table = md_table(["round", "setting", "threads", "images/s", "other processes' load (cores)"],
                     [[str(r["round"]), r["setting"], str(r["threads"]), f"{r['images_per_s']:.0f}",
                       "—" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f}"] for r in rows])
    body = "\n".join([
        f"One training step loop (a sampled MnasNet network at 32 px, digits, batch {args.batch}, {args.steps} steps "
        f"per measurement) on {available_cpus()} CPUs while a second CPU-bound job runs (`bench.toolbox`, 2 torch "
        f"threads), alternating torch's default ({default_threads} threads) and `fair_threads()` (a thread per "
        f"CPU other processes leave free), {args.rounds} rounds. Median images/s: default "
        f"{medians['default']:.0f}, fair {medians['fair']:.0f} (**{medians['fair'] / medians['default']:.2f}×**).",
        *table])
    print(body)
    if not args.no_write:
        publish("threads", "Training threads on a shared machine: torch's default vs the fair share", body,
                {"rows": rows, "medians": medians, "args": vars(args)})


if __name__ == "__main__":
    main()
