"""HAQ's latency mode on ONNX Runtime: the agent's int8/fp32 policy against uniform int8 and the
best single layer kept fp32, under one latency budget, predicted and measured (issue #16 item 4).

Network: the trained 32-px CIFAR-10 network of `bench.compression` / `bench.int8` (MobileNetV2
w0.5, small-input strides; same recipe). Cost model: a per-layer table measured here in context
(`compress.haq_measure.measure_layer_table`: all-int8 and each layer kept fp32, timed together),
or `--lut` an int8-aware table (`nas lut build --precision int8`; one decision per block). Budget:
the all-int8 prediction plus `--budget-fraction` of what keeping every layer fp32 would add.
Reward: calibrated-only fake-quant accuracy on `--reward-images` validation images (no
fine-tune, as the CLI's search). The three policies are then exported (mixed graphs: Q/DQ only
at precision boundaries, checked against fake-quant) and timed end to end with fp32,
interleaved (ORT, 1 thread, batch 1); accuracies are fake-quant PyTorch on the test split.

    python -m bench.haq_latency                  # trains the base (~5 min on 2 cores), then ~10-20 min
    python -m bench.haq_latency --smoke          # a few min: 1 block per stage, 1 epoch on 2 batches, 4 episodes, no write
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from bench.compression_parts import EVAL_BATCH, cifar_mobilenet_v2
from bench.int8 import isa
from bench.report import fmt, md_table, pct, publish
from compress.haq import HaqConfig, search_quant_policy
from compress.haq_latency import FP32, INT8
from compress.haq_measure import latency_baselines, latency_problem, measure_layer_table, measure_policies
from compress.quantize import apply_policy, calibrate
from compress.quantize_policy import QuantPolicy
from compress.scale import scale_spec
from nas.training import TrainConfig, evaluate, load_dataset, train
from predictors.latency import MeasureSettings
from search_spaces.build import build_model

logger = logging.getLogger("bench.haq_latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default="cifar10:/work/shared/data/cifar10_subset.npz")
    add("--width", type=float, default=0.5)
    add("--depth", type=float, default=1.0, help="Depth multiplier of the network (smoke runs: fewer layers).")
    add("--epochs", type=int, default=8, help="fp32 training epochs (bench.compression's 8).")
    add("--lr", type=float, default=0.05)
    add("--batch-size", type=int, default=64)
    add("--max-batches", type=int, default=None, help="Cap on batches per epoch (smoke runs).")
    add("--calibration-batches", type=int, default=4, help="Batches of 64 train images that set the ranges.")
    add("--episodes", type=int, default=60, help="HAQ episodes (the CLI's default).")
    add("--budget-fraction", type=float, default=0.3,
        help="Budget = all-int8 prediction + this fraction of (all-fp32 - all-int8) predicted.")
    add("--reward-images", type=int, default=500, help="Validation images behind each episode's reward.")
    add("--eval-limit", type=int, default=None, help="Validation and test images kept (smoke runs; default all).")
    add("--lut", type=Path, default=None, help="An int8-aware latency table instead of the in-context one.")
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--threads", type=int, default=2, help="torch threads (training, evaluation); ORT runs 1 thread.")
    add("--seed", type=int, default=0)
    add("--out", type=Path, default=Path("runs/bench/haq_latency"), help="Where the table and rows go.")
    add("--smoke", action="store_true", help="Tiny everything, no BENCHMARKS write (a 1-2 minute check).")
    add("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.max_batches, args.episodes, args.measure, args.depth = 1, 2, 4, "2,3,3", 0.1
        args.calibration_batches, args.reward_images, args.eval_limit, args.no_write = 1, 64, 128, True
    return args


def _subset(dataset: TensorDataset, count: int | None, seed: int) -> TensorDataset:
    # a random subset: the splits are grouped by class, so a prefix would hold one or two classes
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return TensorDataset(*(tensor[pick] for tensor in dataset.tensors))


def run(args: argparse.Namespace) -> dict[str, Any]:
    measure = MeasureSettings.parse(args.measure)
    measure_kw = {"warmup": measure.warmup, "blocks": measure.blocks, "block_runs": measure.block_runs}
    data = load_dataset(args.data, 32, seed=args.seed)
    if args.eval_limit is not None:
        data = replace(data, val=_subset(data.val, args.eval_limit, args.seed),
                       test=_subset(data.test, args.eval_limit, args.seed))
    spec = cifar_mobilenet_v2(args.width, data.resolution, data.num_classes)
    spec = scale_spec(spec, 1.0, args.depth) if args.depth != 1.0 else spec
    shape = (1, 3, spec.resolution, spec.resolution)
    torch.manual_seed(args.seed)
    base = build_model(spec)
    start = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         max_batches_per_epoch=args.max_batches, eval_batch_size=EVAL_BATCH)
    report = train(base, data, config, evaluate_test=True)
    if report.status != "ok":
        raise RuntimeError(f"base training failed: {report.reason}")
    train_s = time.perf_counter() - start
    base.eval()
    batches = data.calibration_batches(args.seed, images=64 * args.calibration_batches)
    reward_set = _subset(data.val, args.reward_images, args.seed)

    def reward_accuracy(qmodel: torch.nn.Module) -> float:
        return evaluate(qmodel, reward_set, batch_size=EVAL_BATCH)

    start = time.perf_counter()
    if args.lut is not None:
        from nas.commands.quantize_latency import load_cost

        cost = load_cost(args.lut)
    else:
        cost = measure_layer_table(base, batches, shape, **measure_kw)
        args.out.mkdir(parents=True, exist_ok=True)
        cost.save(args.out / "layer_latency.json")
    table_s = time.perf_counter() - start
    probe = latency_problem(base, batches, cost, float("inf"))
    floor = probe.predict([INT8] * probe.steps)
    ceiling = probe.predict([FP32] * probe.steps)
    budget = floor + args.budget_fraction * max(ceiling - floor, 0.0)
    logger.info("predicted: all int8 %.4f ms, all fp32 %.4f ms; budget %.4f ms", floor, ceiling, budget)

    start = time.perf_counter()
    chosen, search = search_quant_policy(base, reward_accuracy, calibration=batches, latency_budget_ms=budget,
                                         layer_cost=cost, episodes=args.episodes, seed=args.seed,
                                         config=HaqConfig(warmup_episodes=min(20, args.episodes // 4)))
    search_s = time.perf_counter() - start
    baselines = latency_baselines(base, reward_accuracy, calibration=batches, layer_cost=cost,
                                  latency_budget_ms=budget)
    policies = {"HAQ latency mode": chosen, "uniform int8": QuantPolicy.from_dict(baselines["uniform_int8"]["policy"])}
    if baselines["best_single_fp32"] is not None:
        policies["best single layer fp32"] = QuantPolicy.from_dict(baselines["best_single_fp32"]["policy"])
    check = torch.cat(batches)[:16]
    measured = measure_policies(base, policies, batches, shape, predict=probe.resource, check_inputs=check,
                                **measure_kw)
    accuracy = {"fp32": evaluate(base, data.test, batch_size=EVAL_BATCH)}
    reward = {"fp32": reward_accuracy(base)}
    for label, policy in policies.items():
        qmodel = calibrate(apply_policy(base, policy), batches).eval()
        accuracy[label], reward[label] = evaluate(qmodel, data.test, batch_size=EVAL_BATCH), reward_accuracy(qmodel)
    return {
        "args": json.loads(json.dumps(vars(args), default=str)), "isa": isa(), "spec": spec.name,
        "train": {"epochs": args.epochs, "train_s": train_s, "report": report.to_dict()},
        "table": {"source": probe.cost_source, "build_s": table_s, "units": len(probe.units)},
        "budget_ms": budget, "predicted_all_int8_ms": floor, "predicted_all_fp32_ms": ceiling,
        "search_s": search_s, "search": {k: search[k] for k in ("budget", "best_episode", "best", "episodes")},
        "baselines": baselines, "measured": measured, "test_accuracy": accuracy, "reward_accuracy": reward,
    }


def render(results: dict[str, Any]) -> str:
    measured, accuracy = results["measured"], results["test_accuracy"]
    rows = [["fp32", "all", "—", fmt(measured["fp32"]["measured_ms"], ".4f"), pct(accuracy["fp32"]), "—"]]
    for label, entry in measured.items():
        if label in ("fp32", "backend", "latency_source"):
            continue
        check = entry.get("export_check", {})
        rows.append([label, ", ".join(entry["fp32_layers"]) or "none", fmt(entry.get("predicted_ms"), ".4f"),
                     f"{entry['measured_ms']:.4f} ({entry['p10_ms']:.4f}-{entry['p90_ms']:.4f})",
                     pct(accuracy[label]),
                     f"{check.get('relative', float('nan')):.2f} / {pct(check.get('top1_agreement'))}"
                     + ("" if check.get("passed", True) else " **fails**")])
    cpu = results["isa"]
    lines = [
        f"CIFAR-10 subset network `{results['spec']}`, ONNX Runtime 1 thread, batch 1; CPU ISA: {cpu}. "
        f"Budget {results['budget_ms']:.4f} ms = all-int8 prediction {results['predicted_all_int8_ms']:.4f} ms + "
        f"{results['args']['budget_fraction']:g} x (all-fp32 {results['predicted_all_fp32_ms']:.4f} - all-int8). "
        f"Costs the search sees are **predicted** ({results['table']['source']}); the ms column is **measured** "
        f"end to end, the three policies and fp32 interleaved. HAQ: {results['args']['episodes']} episodes, "
        f"reward = calibrated fake-quant accuracy on {results['args']['reward_images']} validation images; "
        f"test accuracy below is fake-quant PyTorch, no fine-tune.",
        *md_table(["policy", "layers kept fp32", "predicted ms", "measured ms (p10-p90)", "test acc",
                   "export check (relative / top-1)"], rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("bench.haq_latency", "compress.haq", "compress.haq_measure", "nas.training.train"):
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(args)
    results["wall_s"] = time.perf_counter() - start
    body = render(results)
    print(body)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if not args.no_write:
        publish("haq_latency", "HAQ latency mode on ONNX Runtime: int8/fp32 per layer vs uniform int8", body, results)


if __name__ == "__main__":
    main()
