"""Compression on the CIFAR-10 subset: HAQ mixed precision vs uniform 4-bit at the same weight
bits, and pruned vs unpruned latency against the MACs saved (int8 vs fp32 latency: `bench.int8`).

1. Base: zoo MobileNetV2 at width 0.5, 10 classes, 32 px with the small-input strides (stem and
   first stride-2 block at stride 1: a 4x4 final map), trained fp32 from scratch (SGD, no
   augmentation) on the 9,000-image train split.
2. Quantization (activations 8 bits throughout, as HAQ's size-constrained experiments): uniform
   w4a8; HAQ's DDPG search under budget = w4a8's total weight bits, reward = val accuracy right
   after calibration (optionally after a few distilled QAT batches, --haq-finetune-batches); both
   then get the same QAT with distillation. Uniform w8a8 is calibrated only (the reference).
3. Pruning: uniform l1 channel pruning per ratio; MACs/params, latency on onnxruntime and torch
   (1 thread), test accuracy before and after a distilled fine-tune.

    python -m bench.compression                     # ~20-25 min on 2 quiet cores; writes BENCHMARKS.md
    python -m bench.compression --epochs 1 --qat-epochs 1 --episodes 3 --ratios 0.5 --prune-epochs 1 \
        --max-batches 5 --measure 2,3,3 --out runs/bench/compression-smoke --no-write  # ~4 min: every code path
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from bench import compression_parts as parts
from bench.report import fmt, md_table, pct, publish, results_path
from nas.training import TrainConfig, load_dataset, train
from predictors.cost import count
from predictors.latency import MeasureSettings
from search_spaces.build import build_model

logger = logging.getLogger("bench.compression")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts.add_base_arguments(parser)
    add = parser.add_argument
    add("--train-limit", type=int, default=None, help="Training images (stratified); default all 9,000.")
    add("--max-batches", type=int, default=None, help="Cap on batches per epoch everywhere (smoke tests).")
    add("--qat-epochs", type=int, default=2, help="QAT + distillation epochs of w4a8 and HAQ (same for both).")
    add("--episodes", type=int, default=40, help="HAQ search episodes.")
    add("--haq-val", type=int, default=1000, help="Val images behind each HAQ reward.")
    add("--haq-finetune-batches", type=int, default=0, help="Distilled QAT batches before each reward (0: none).")
    add("--calibration-batches", type=int, default=4, help="Batches of 64 train images that set activation ranges.")
    add("--ratios", type=float, nargs="*", default=[0.25, 0.5, 0.75], help="Uniform prune ratios.")
    add("--prune-epochs", type=int, default=2, help="Distilled fine-tune epochs after pruning.")
    add("--round-to", type=int, default=8, help="Pruned widths are multiples of this (the project's default).")
    add("--backends", nargs="+", default=["onnxruntime", "torch"], help="Latency backends for pruning.")
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--threads", type=int, default=2, help="torch threads for training and evaluation (latency: 1).")
    add("--device", default="auto", help="Training device (latency is always CPU).")
    add("--seed", type=int, default=0, help="Data split, weight init, training order and HAQ agent.")
    add("--out", type=Path, default=Path("runs/bench/compression"))
    add("--no-write", action="store_true", help="Print only: do not touch BENCHMARKS.md or bench/results/.")
    return parser.parse_args(argv)


def _ms(m: dict[str, float]) -> str:
    return f"{m['median_ms']:.3f} ({m['p10_ms']:.3f}–{m['p90_ms']:.3f})"


def _base_paragraph(args: argparse.Namespace, base: dict[str, Any], timing: dict[str, float]) -> list[str]:
    return [
        f"Base `{base['spec']}`: zoo MobileNetV2, width {args.width:g}, 10 classes, 32 px with the small-input "
        f"strides (stem and first stride-2 block at stride 1, 4×4 final map); {base['params']:,} params, "
        f"{base['macs'] / 1e6:.1f}M MACs. Trained fp32 from scratch for {args.epochs} epochs (SGD Nesterov lr "
        f"{args.lr:g}, cosine, batch {args.batch_size}, no augmentation) on {base['train_images']:,} train images; "
        f"val {base['val_images']:,}, test {base['test_images']:,}. Seed {args.seed}; training on {args.threads} torch "
        f"thread(s), latency on 1. Fine-tunes: AdamW 1e-3, cosine, distillation from the fp32 model (T=4, α=0.9). "
        f"Wall time {timing['total_s'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()
                                                            if k != "total_s") + ").",
    ]


def _quantization_section(args: argparse.Namespace, quant: dict[str, Any]) -> list[str]:
    lines = ["", f"**Mixed precision vs uniform 4-bit at the same weight bits.** Activations 8-bit everywhere "
             f"(HAQ's size-constrained setting); weights 2–8 bits per layer (linear, per output channel), "
             f"budget = the w4a8 policy's {quant['budget_weight_bits']:,} bits (biases 32-bit). HAQ: "
             f"{quant['episodes']} DDPG episodes, {quant['per_episode_s']:.1f} s each; reward = accuracy on "
             f"{quant['reward']['val_images']} val images after calibration on {quant['calibration_images']} "
             f"train images" + (f" and {quant['reward']['finetune_batches']} distilled QAT batches"
                                if quant['reward']['finetune_batches'] else " (no fine-tune)") +
             f"; best episode {quant['search']['best_episode']} (val {pct(quant['search']['best']['accuracy'])})."
             f" Then w4a8 and HAQ get the same {args.qat_epochs} QAT epochs; w8a8 is calibrated only."]
    rows = [[label, f"{row['weight_bits']:,} ({row['weight_bits'] / 8192:.0f} KiB)",
             f"{row['weight_bits'] / quant['budget_weight_bits']:.3f}×", fmt(row["bitfusion_cycles"], ",.0f"),
             pct(row["test_accuracy_ptq"]), pct(row["test_accuracy"])] for label, row in quant["rows"].items()]
    lines += md_table(["policy", "weight bits", "vs w4a8 budget", "BitFusion cycles (rel.)",
                       "test acc, calibrated only", "test acc after QAT + KD"], rows)
    lines += ["", "Weight bits per layer in execution order (stem … classifier):", ""]
    return lines + [f"- {label}: `{row['bits']}`" for label, row in quant["rows"].items() if row["bits"]]


def _pruning_section(args: argparse.Namespace, prune: dict[str, Any]) -> list[str]:
    backends, unpruned = list(prune["rows"][0]["latency_ms"]), prune["rows"][0]["latency_ms"]
    rows = [[f"{row['ratio']:g}", f"{row['params']:,}", f"{row['macs'] / 1e6:.2f}M",
             f"{pct(row['macs_reduction'])} ({1 / (1 - row['macs_reduction']):.2f}×)",
             *(f"{ms[b]['median_ms']:.3f} ({unpruned[b]['median_ms'] / ms[b]['median_ms']:.2f}×)" for b in backends),
             pct(row["test_accuracy_before_finetune"]), pct(row["test_accuracy"])]
            for row in prune["rows"] for ms in [row["latency_ms"]]]
    return ["", (f"**Pruning**: uniform l1 channel pruning of the trained base (inner and output widths, "
            f"multiples of {prune['round_to']}), then {prune['finetune_epochs']} distilled fine-tune epochs. "
            "Latency: all specs measured in one interleaved call per backend, 1 thread, batch 1 "
            "(speed-up in brackets)."),
            *md_table(["ratio", "params", "MACs", "MACs saved", *(f"{b} ms" for b in backends), "test acc before FT",
                       "after FT"], rows),
            "", f"Plot: `{args.out}/prune.png` (not committed); raw numbers: `{results_path('compression')}`."]


def render(args: argparse.Namespace, results: dict[str, Any]) -> str:
    lines = _base_paragraph(args, results["base"], results["timing"])
    if results.get("quantize"):
        lines += _quantization_section(args, results["quantize"])
    if results.get("prune"):
        lines += _pruning_section(args, results["prune"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("bench.compression", "nas.training.train", "compress.haq"):  # progress, without ORT/export chatter
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    measure = MeasureSettings.parse(args.measure)
    timing: dict[str, float] = {}
    start = phase = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal phase
        timing[name] = time.perf_counter() - phase
        phase = time.perf_counter()

    data = load_dataset(args.data, 32, seed=args.seed, limit=args.train_limit)
    spec = parts.cifar_mobilenet_v2(args.width, data.resolution, data.num_classes)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.device, max_batches_per_epoch=args.max_batches, eval_batch_size=parts.EVAL_BATCH)
    torch.manual_seed(args.seed)  # weight init is the caller's business (nas.training.train's contract)
    base = build_model(spec)
    report = train(base, data, config, evaluate_test=True)
    if report.status != "ok":
        raise RuntimeError(f"base training failed: {report.reason}")
    cost = count(spec)
    steps = min(len(data.train) // args.batch_size, args.max_batches or 10**9)
    results: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "base": {"spec": spec.name, "params": cost.params,
                                        "macs": cost.macs, "train_images": len(data.train), "val_images": len(data.val),
                                        "test_images": len(data.test), "train": report.to_dict(),
                                        "epoch_s": report.train_time_s / report.epochs_run, "steps_per_epoch": steps}}
    logger.info("base: test acc %.4f, %.1f s/epoch (%d steps)", report.test_accuracy,
                results["base"]["epoch_s"], steps)
    lap("base training")
    results["quantize"], _ = parts.quantization(
        base, data, config, qat_epochs=args.qat_epochs, episodes=args.episodes,
        calibration_batches=args.calibration_batches, finetune_batches=args.haq_finetune_batches,
        haq_val=args.haq_val, seed=args.seed)
    lap("quantization")
    if args.ratios:
        results["prune"] = parts.pruning(spec, base, data, config, ratios=args.ratios, epochs=args.prune_epochs,
                                         round_to=args.round_to, backends=args.backends, measure=measure)
        parts.plot_pruning(results["prune"]["rows"], args.out / "prune.png")
        lap("pruning")
    timing["total_s"] = time.perf_counter() - start
    results["timing"] = timing
    body = render(args, results)
    print(body)
    if not args.no_write:
        publish("compression", "Compression on CIFAR-10 (subset)", body, results)


if __name__ == "__main__":
    main()
