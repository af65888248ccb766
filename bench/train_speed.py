"""Training images/s at 32 px on this CPU, before and after the faster train step.

Three zoo networks adapted to small inputs (MobileNetV2 and MnasNet-B1 at width 0.7, ShuffleNetV2
1.0), batch 64, CIFAR-10 subset images held in memory, one torch thread (as the benchmarks' jobs
train). Modes, interleaved round by round so drift on the machine hits all alike:

- `before`: the step as `nas.training.train` ran it before channels-last (NCHW tensors);
- `channels-last`: the current step (NHWC weights and activations on CPU);
- `channels-last + compile`: the same with `torch.compile` (inductor), its compile time reported
  apart from the steady images/s.

Then accuracy unchanged: MobileNetV2 trained with the final recipe for `--accuracy-epochs`
epochs in `before` and in `channels-last` mode from the same seed, test accuracy side by side.

    python -m bench.train_speed
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from bench.report import md_table, publish

logger = logging.getLogger("bench.train_speed")
NETWORKS = {"mobilenet_v2": 0.7, "mnasnet_b1": 0.7, "shufflenet_v2_x1_0": 1.0}
MODES = ("before", "channels-last", "channels-last + compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default="cifar10:/work/shared/data/cifar10_subset.npz")
    add("--rounds", type=int, default=3)
    add("--steps", type=int, default=20, help="Timed steps per measurement (after 3 warm-up steps).")
    add("--threads", type=int, default=1)
    add("--accuracy-epochs", type=int, default=4)
    add("--no-compile", action="store_true")
    add("--no-write", action="store_true")
    return parser.parse_args(argv)


def network(name: str) -> Any:
    from compress.scale import scale_spec
    from search_spaces import small_input, zoo

    return scale_spec(small_input(zoo.get(name, 32, 10)), width=NETWORKS[name])


@contextmanager
def layout(mode: str) -> Iterator[None]:
    """`before` restores the NCHW step for the duration (the train loop asks `memory_format`)."""
    import importlib

    loop = importlib.import_module("nas.training.train")  # the package re-exports a function of that name

    if mode != "before":
        yield
        return
    current = loop.memory_format
    loop.memory_format = lambda device: torch.contiguous_format
    try:
        yield
    finally:
        loop.memory_format = current


def images_per_s(arch: Any, mode: str, images: torch.Tensor, labels: torch.Tensor, steps: int) -> dict[str, float]:
    from search_spaces.build import build_model

    torch.manual_seed(0)
    model = build_model(arch).train()
    fmt = torch.contiguous_format if mode == "before" else torch.channels_last
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    forward = torch.compile(model) if "compile" in mode else model
    batch = 64

    def step(index: int) -> None:
        start = (index * batch) % (len(images) - batch)
        x = images[start:start + batch].contiguous(memory_format=fmt)
        loss = criterion(forward(x), labels[start:start + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step(0)  # the first step includes compiling
    first = time.perf_counter() - started
    for index in range(1, 3):
        step(index)
    started = time.perf_counter()
    for index in range(3, 3 + steps):
        step(index)
    return {"images_per_s": steps * batch / (time.perf_counter() - started), "first_step_s": first}


def accuracy_check(args: argparse.Namespace) -> list[dict[str, Any]]:
    from nas.training import load_dataset, recipe, train
    from search_spaces.build import build_model

    data = load_dataset(args.data, 32, seed=0)
    rows = []
    for mode in ("before", "channels-last"):
        torch.manual_seed(0)
        model = build_model(network("mobilenet_v2"))
        with layout(mode):
            report = train(model, data, recipe("final", epochs=args.accuracy_epochs, seed=0, device="cpu"),
                           evaluate_test=True)
        rows.append({"mode": mode, "test_accuracy": report.test_accuracy, "val_accuracy": report.val_accuracy,
                     "train_time_s": report.train_time_s, "images_per_s": args.accuracy_epochs * len(data.train)
                     / report.train_time_s})
        logger.info("accuracy check %s: %s", mode, rows[-1])
    return rows


def render(r: dict[str, Any]) -> str:
    modes = r["modes"]
    lines = [f"Batch 64, {r['threads']} torch thread(s), {r['steps']} timed steps per measurement after 3 warm-up "
             f"steps, {r['rounds']} rounds interleaved; median images/s (ratio to `before`). Load average at start "
             + ("not recorded." if r["load_at_start"] is None else f"{r['load_at_start']:.1f}.")]
    rows = []
    for name, per_mode in r["speed"].items():
        base = statistics.median(per_mode["before"])
        cells = [f"{statistics.median(per_mode[m]):.0f} ({statistics.median(per_mode[m]) / base:.2f}x)" for m in modes]
        rows.append([f"{name} w{NETWORKS[name]}", *cells])
    lines += md_table(["network", *modes], rows)
    if r["first_step_s"]:
        lines += ["", "First step with `torch.compile` (compile time included): " + ", ".join(
            f"{name} {statistics.median(v):.0f} s" for name, v in r["first_step_s"].items()) + "."]
    if not r["accuracy"]:
        return "\n".join(lines + ["", "Accuracy check: not run (see the reading)."])
    lines += ["", f"Accuracy unchanged? MobileNetV2 w0.7, final recipe for {r['accuracy_epochs']} epochs, seed 0, "
                  "whole training timed (val evaluations included):"]
    lines += md_table(["mode", "test acc", "val acc", "train wall", "images/s"],
                      [[row["mode"], f"{100 * row['test_accuracy']:.2f}%", f"{100 * row['val_accuracy']:.2f}%",
                        f"{row['train_time_s']:.0f} s", f"{row['images_per_s']:.0f}"] for row in r["accuracy"]])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import os

    from nas.training import load_dataset

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    data = load_dataset(args.data, 32, seed=0)
    images, labels = data.train.tensors[0][:4096], data.train.tensors[1][:4096]
    modes = [m for m in MODES if not (args.no_compile and "compile" in m)]
    speed = {name: {m: [] for m in modes} for name in NETWORKS}
    first: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        for name in NETWORKS:
            for mode in modes:
                measured = images_per_s(network(name), mode, images, labels, args.steps)
                speed[name][mode].append(measured["images_per_s"])
                if "compile" in mode:
                    first.setdefault(name, []).append(measured["first_step_s"])
                logger.info("round %d %s %s: %.0f images/s", round_index, name, mode, measured["images_per_s"])
    report = {"threads": args.threads, "steps": args.steps, "rounds": args.rounds, "modes": modes,
              "load_at_start": load, "speed": speed, "first_step_s": first, "accuracy_epochs": args.accuracy_epochs,
              "accuracy": accuracy_check(args)}
    body = render(report)
    print(body)
    if not args.no_write:
        publish("train_speed", "Training steps on CPU: images/s before and after", body, report)


if __name__ == "__main__":
    main()
