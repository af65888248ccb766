"""The rest of the compression toolbox on one trained network: Deep Compression, low-rank vs
channel pruning at equal measured latency, lottery tickets and sparse regularization, and the
1-2-bit quantizers (issue #18).

The base is the network `bench.compression` uses (zoo MobileNetV2 w0.5, 32 px, small-input
strides, trained fp32 on the 9,000-image CIFAR-10 subset), trained here with the same recipe and
cached by (spec hash, recipe, data, seed). Each study (`bench/toolbox_<name>.py`: ``run(ctx)`` ->
JSON, ``render(result)`` -> Markdown) gets a `ToolboxContext` and is cached by (base key, study
settings), so a killed run resumes at the first unfinished study and `--studies` re-runs one.

    python -m bench.toolbox --finetune-epochs 1         # ~60 min on 2 quiet cores; writes BENCHMARKS.md
    nohup python -m bench.toolbox > runs/bench/toolbox.log 2>&1 &     # the way to run it
    python -m bench.toolbox --epochs 1 --finetune-epochs 1 --max-batches 3 --measure 2,3,3 \
        --out runs/bench/toolbox-smoke --no-write      # every code path in a few minutes
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.compression_parts import add_base_arguments, cifar_mobilenet_v2
from bench.report import publish
from bench.toolbox_context import ToolboxContext
from nas.training import TrainConfig, load_dataset, train
from predictors.latency import MeasureSettings
from search_spaces.build import build_model

logger = logging.getLogger("bench.toolbox")

STUDIES = {
    "deep_compression": "bench.toolbox_deep_compression",
    "lowrank": "bench.toolbox_lowrank",
    "lottery": "bench.toolbox_lottery",
    "lowbit": "bench.toolbox_lowbit",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_base_arguments(parser)
    add = parser.add_argument
    add("--finetune-epochs", type=int, default=2, help="Distilled fine-tune epochs after each compression step.")
    add("--max-batches", type=int, default=None, help="Cap on batches per epoch everywhere (smoke tests).")
    add("--finetune-max-batches", type=int, default=80,
        help="Cap on batches per fine-tune epoch in the studies (the base trains on every batch): 80 of 141.")
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--threads", type=int, default=2, help="torch threads for training (latency: 1).")
    add("--device", default="auto", help="Training device (latency is always CPU).")
    add("--seed", type=int, default=0)
    add("--studies", nargs="*", default=list(STUDIES), choices=list(STUDIES))
    add("--fresh", nargs="*", default=[], choices=list(STUDIES),
        help="Studies to run again even when cached (the cached base is kept).")
    add("--out", type=Path, default=Path("runs/bench/toolbox"))
    add("--no-write", action="store_true", help="Print only: do not touch BENCHMARKS.md or bench/results/.")
    return parser.parse_args(argv)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base(args: argparse.Namespace, out: Path) -> tuple[ToolboxContext, dict[str, Any], str]:
    """Train the base once per (spec, recipe, data, seed); later runs load its weights."""
    data = load_dataset(args.data, 32, seed=args.seed)
    spec = cifar_mobilenet_v2(args.width, data.resolution, data.num_classes)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.device, max_batches_per_epoch=args.max_batches, eval_batch_size=64)
    key = _key(spec.content_hash(), asdict(config), args.data)
    weights, record = out / f"base-{key}.safetensors", out / f"base-{key}.json"
    torch.manual_seed(args.seed)
    model = build_model(spec)
    if weights.is_file() and record.is_file():
        model.load_state_dict(load_file(weights))
        info = json.loads(record.read_text())
        logger.info("base: cached %s (test acc %.4f)", weights, info["test_accuracy"])
    else:
        report = train(model, data, config, evaluate_test=True)
        if report.status != "ok":
            raise RuntimeError(f"base training failed: {report.reason}")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
        info = {"test_accuracy": report.test_accuracy, "train_s": report.train_time_s, "train": report.to_dict()}
        record.write_text(json.dumps(info, indent=1) + "\n")
        logger.info("base: trained, test acc %.4f in %.0f s", report.test_accuracy, report.train_time_s)
    model.cpu().eval()
    # the studies' fine-tunes may see fewer batches per epoch than the base did (their budget)
    study_config = replace(config, max_batches_per_epoch=args.max_batches or args.finetune_max_batches)
    ctx = ToolboxContext(spec=spec, base=model, base_accuracy=info["test_accuracy"], data=data, config=study_config,
                         finetune_epochs=args.finetune_epochs, measure=MeasureSettings.parse(args.measure),
                         out=out, seed=args.seed)
    return ctx, {"spec": spec.name, "key": key, **info, "train_images": len(data.train),
                 "test_images": len(data.test)}, key


def _run_study(name: str, ctx: ToolboxContext, key: str, fresh: bool) -> dict[str, Any]:
    """The study's cached result, or a new one (always with `fresh`, e.g. after changing its settings)."""
    path = ctx.out / f"{name}-{key}.json"
    if path.is_file() and not fresh:
        logger.info("%s: cached %s", name, path)
        return json.loads(path.read_text())
    module = importlib.import_module(STUDIES[name])
    start = time.perf_counter()
    torch.manual_seed(ctx.seed)
    result = module.run(ctx)
    result["wall_s"] = time.perf_counter() - start
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    logger.info("%s: done in %.0f s", name, result["wall_s"])
    return result


def accuracy_latency_points(results: dict[str, dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(method, measured ms, test accuracy) of every compressed network. Low-rank and channel
    pruning change the graph and are measured; unstructured sparsity, weight sharing and 1-2-bit
    weights run on ONNX Runtime's dense fp32 kernels here, so they sit at the base's latency."""
    lowrank = results.get("lowrank", {}).get("rows", [])
    base = next((row["latency_ms"] for row in lowrank if row["method"] == "base"), None)
    points = [(row["method"], row["latency_ms"], row["test_accuracy"]) for row in lowrank]
    if base is None:
        return points
    for row in results.get("deep_compression", {}).get("results", []):
        points.append(("Deep Compression (dense kernels)", base, row["accuracy"]["decoded_file"]))
    for row in results.get("lottery", {}).get("rows", []):
        points.append((f"{row['method']} (unstructured, dense kernels)", base, row["accuracy"]))
    for label, row in results.get("lowbit", {}).get("rows", {}).items():
        if label != "fp32":
            points.append(("1-2-bit weights (simulated, dense kernels)", base, row["test_accuracy"]))
    return points


def plot_accuracy_vs_latency(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Accuracy vs measured latency, one marker style per method."""
    points = accuracy_latency_points(results)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for index, method in enumerate(dict.fromkeys(method for method, _, _ in points)):
        xy = sorted((ms, 100 * acc) for m, ms, acc in points if m == method)
        ax.plot(*zip(*xy), marker="osD^vx*+"[index % 8], linestyle="-" if len(xy) > 1 and "dense" not in method
                else "none", label=method, alpha=0.8)
    ax.set_xlabel("ONNX Runtime latency, ms (1 thread, batch 1)")
    ax.set_ylabel("test accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("bench", "nas.training.train", "compress"):
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ctx, base, base_key = _base(args, args.out)
    settings_key = _key(base_key, args.finetune_epochs, args.max_batches, args.finetune_max_batches, args.measure)
    results = {name: _run_study(name, ctx, settings_key, name in args.fresh) for name in args.studies}
    lines = [f"Base `{base['spec']}` (the network of the compression section): trained fp32 for {args.epochs} "
             f"epochs (SGD Nesterov lr {args.lr:g}, cosine, batch {args.batch_size}, no augmentation) on "
             f"{base['train_images']:,} images, test accuracy **{100 * base['test_accuracy']:.2f}%** on "
             f"{base['test_images']:,}. Every fine-tune: the project's distilled fine-tune (AdamW 1e-3, cosine, "
             f"KD from the fp32 base, T=4, α=0.9), {args.finetune_epochs} epoch(s) of at most "
             f"{ctx.config.max_batches_per_epoch} batches of {args.batch_size} unless a study says otherwise. "
             f"Seed {args.seed}; training on {args.threads} torch thread(s). Wall time of this run "
             f"{(time.perf_counter() - start) / 60:.1f} min (cached studies cost nothing; "
             + ", ".join(f"{name} {r['wall_s'] / 60:.1f} min" for name, r in results.items()) + " when run)."]
    for name, result in results.items():
        lines += ["", *importlib.import_module(STUDIES[name]).render(result)]
    plot = Path("bench/results/toolbox_accuracy_latency.png")
    if not args.no_write and plot_accuracy_vs_latency(results, plot):
        lines += ["", f"Accuracy vs measured latency of every method that reports one: `{plot}`."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        publish("toolbox", "The compression toolbox on one network: Deep Compression, low-rank, lottery tickets, "
                "1-2-bit weights", body, {"args": {k: str(v) for k, v in vars(args).items()}, "base": base,
                                          "studies": results})


if __name__ == "__main__":
    main()
