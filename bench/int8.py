"""int8 on ONNX Runtime vs fp32, ours against the anchor tool (`onnxruntime.quantization.quantize_static`).

Models: zoo MobileNetV2, MnasNet-A1 and GhostNet 1.0 at 224 px (random init, BN statistics from
the calibration batches, classifier N(0, 0.05): latency does not depend on the weights' values)
and the trained 32-px CIFAR-10 network of `bench.compression` (MobileNetV2 w0.5, small-input
strides, trained here with the same recipe). Per model, four ONNX files from the same float
model and the same calibration images:

- fp32: the float model (`export_onnx`; the exporter folds BN);
- ours: `export_qdq` of the calibrated all-8-bit model (`compress.quantize*`: int8 initializers,
  output quantizers and int8 residual adds, 7-bit weight codes), checked against fake-quant;
- ORT QDQ / ORT QOperator: `quant_pre_process` + `quantize_static` of the fp32 file, per-channel,
  uint8 activations (MinMax), int8 weights with `reduce_range=True` (7-bit, as ours: the full
  range saturates on x86 without VNNI; speed is the same either way).

Latency: ONNX Runtime CPU, 1 thread, batch 1, all optimizations; the four files of a model timed
together, interleaved (`measure_onnx`: median of blocks, p10-p90). Op census of ORT's optimized
graph (`optimized_model_filepath`). CIFAR accuracy: the 2,000 test images through ORT, batch 1.

    python -m bench.int8                   # ~15 min on 2 cores; writes BENCHMARKS.md + bench/results/int8.json
    python -m bench.int8 --epochs 1 --qat-epochs 1 --max-batches 2 --models --measure 1,2,2 --eval-limit 50 --no-write
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.compression_parts import EVAL_BATCH, cifar_mobilenet_v2
from bench.report import SPEED_FLAGS, fmt, md_table, pct, publish
from compress import apply_policy, calibrate, check_qdq_export, export_qdq, prepare_qat, uniform_policy
from compress.quantize_onnx import optimized_op_counts, summarize_ops
from nas.training import TrainConfig, distilled_finetune, evaluate, load_dataset, train
from predictors.latency import MeasureSettings
from predictors.latency.backends import OnnxRuntimeBackend, export_onnx, fixed_input, measure_onnx
from search_spaces import zoo
from search_spaces.build import build_model

logger = logging.getLogger("bench.int8")
VARIANTS = ("fp32", "ours", "ORT QDQ", "ORT QOperator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default="cifar10:/work/shared/data/cifar10_subset.npz")
    add("--width", type=float, default=0.5)
    add("--epochs", type=int, default=8, help="fp32 training epochs of the CIFAR network (bench.compression's 8); "
                                              "0: untrained, latency and op counts only.")
    add("--lr", type=float, default=0.05)
    add("--batch-size", type=int, default=64)
    add("--max-batches", type=int, default=None, help="Cap on batches per epoch (smoke runs).")
    add("--qat-epochs", type=int, default=2, help="Distilled QAT epochs of ours on the CIFAR network (0: skip).")
    add("--calibration-batches", type=int, default=4, help="Batches of 64 train images that set the ranges.")
    add("--models", nargs="*", default=["mobilenet_v2", "mnasnet_a1", "ghostnet_1_0"], help="Zoo models at 224 px.")
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--threads", type=int, default=2, help="torch threads for training (latency: ORT, 1 thread).")
    add("--eval-limit", type=int, default=None, help="Test images behind the ORT accuracies (default: all 2,000).")
    add("--seed", type=int, default=0)
    add("--out", type=Path, default=Path("runs/bench/int8"), help="Where the partial results go.")
    add("--from-rows", type=Path, nargs="+", default=None,
        help="Publish the rows.json of earlier runs (e.g. the zoo models and the CIFAR network run as two "
             "processes on a busy machine) without measuring again.")
    add("--no-write", action="store_true")
    return parser.parse_args(argv)


def isa() -> dict[str, Any]:
    flags = open("/proc/cpuinfo", encoding="utf-8").read().split("flags", 1)[-1].split("\n", 1)[0].split()
    present = [f for f in (*SPEED_FLAGS, "avx_vnni", "avx512bw") if f in flags]
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return {"flags": present, "vnni": vnni, "label": ("VNNI" if vnni else "AVX2, no VNNI") if "avx2" in flags
            else "no AVX2"}


def anchor(fp32: bytes, calibration: np.ndarray, fmt_name: str) -> bytes:
    """`quantize_static` of the fp32 file: per-channel, QUInt8 activations, QInt8 weights (reduce_range)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre))
        name = onnx.load(str(pre)).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.rows = iter(calibration)

            def get_next(self) -> dict[str, np.ndarray] | None:
                row = next(self.rows, None)
                return None if row is None else {name: row[None]}

        quantize_static(str(pre), str(out), Reader(), quant_format=getattr(QuantFormat, fmt_name), per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def ort_predictions(model: bytes, images: Tensor) -> np.ndarray:
    session = OnnxRuntimeBackend(threads=1).session(model)
    name = session.get_inputs()[0].name
    return np.stack([session.run(None, {name: row[None].numpy()})[0][0] for row in images])


def random_zoo_model(name: str, resolution: int, batches: Sequence[Tensor]) -> nn.Module:
    """Random init; BN statistics updated (momentum 0.1) by train-mode passes over the calibration
    batches; classifier N(0, 0.05) -- the setting of quantize_export's documented checks."""
    model = build_model(zoo.get(name, resolution, 1000))
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    nn.init.normal_(model.head.classifier.weight, 0.0, 0.05)
    return model.eval()


def compare(label: str, model: nn.Module, qmodel: nn.Module, calibration: Tensor, check: Tensor,
            measure: MeasureSettings) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The four files of one model: sizes, op census, export check of ours, interleaved latency."""
    shape = (1, *calibration.shape[1:])
    files = {"fp32": export_onnx(copy.deepcopy(model).eval(), fixed_input(shape)),
             "ours": export_qdq(qmodel, shape)}
    for fmt_name in ("QDQ", "QOperator"):
        files[f"ORT {fmt_name}"] = anchor(files["fp32"], calibration.numpy(), fmt_name)
    faithful = check_qdq_export(qmodel, files["ours"], check)
    census = {variant: optimized_op_counts(data) for variant, data in files.items()}
    timed = measure_onnx(OnnxRuntimeBackend(threads=1), list(files.values()), shape, warmup=measure.warmup,
                         blocks=measure.blocks, block_runs=measure.block_runs, max_spread=measure.max_spread,
                         retries=measure.retries)
    latency = dict(zip(files, (m.to_dict() for m in timed)))
    row = {"model": label, "resolution": shape[-1], "export_check": faithful.to_dict(),
           "bytes": {v: len(d) for v, d in files.items()}, "ops": census,
           "op_summary": {v: summarize_ops(c) for v, c in census.items()}, "latency": latency,
           "speedup": {v: latency["fp32"]["median_ms"] / latency[v]["median_ms"] for v in files},
           "load_average_after": list(os.getloadavg())}
    logger.info("%s: %s", label, ", ".join(f"{v} {latency[v]['median_ms']:.3f} ms" for v in files))
    return row, files


def cifar_part(args: argparse.Namespace, measure: MeasureSettings) -> dict[str, Any]:
    data = load_dataset(args.data, 32, seed=args.seed)
    spec = cifar_mobilenet_v2(args.width, data.resolution, data.num_classes)
    config = TrainConfig(epochs=max(args.epochs, 1), batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         max_batches_per_epoch=args.max_batches, eval_batch_size=EVAL_BATCH)
    torch.manual_seed(args.seed)
    base = build_model(spec)
    batches = data.calibration_batches(args.seed, images=64 * args.calibration_batches)
    if not args.epochs:  # latency only: BN statistics from the calibration images, no accuracy figures
        base.train()
        with torch.no_grad():
            for batch in batches:
                base(batch)
        qmodel = calibrate(apply_policy(base.eval(), uniform_policy(base, 8)), batches).eval()
        row, _ = compare(f"CIFAR MobileNetV2 w{args.width:g} (untrained)", base, qmodel, torch.cat(batches),
                         torch.cat(batches)[:16], measure)
        return row
    start = time.perf_counter()
    report = train(base, data, config, evaluate_test=True)
    if report.status != "ok":
        raise RuntimeError(f"base training failed: {report.reason}")
    train_s = time.perf_counter() - start
    base.eval()
    qmodel = calibrate(apply_policy(base, uniform_policy(base, 8)), batches).eval()
    # a random subset: the split is grouped by class, so a prefix would hold one or two classes
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(args.seed))[:args.eval_limit]
    test_images, labels = data.test.tensors[0][pick], data.test.tensors[1][pick].numpy()
    check = test_images[torch.randperm(len(test_images), generator=torch.Generator().manual_seed(args.seed))[:16]]
    row, files = compare(f"CIFAR MobileNetV2 w{args.width:g} (trained)", base, qmodel, torch.cat(batches), check,
                         measure)
    predictions = {variant: ort_predictions(data_, test_images) for variant, data_ in files.items()}
    fp32_top1 = predictions["fp32"].argmax(1)
    row["accuracy"] = {variant: {"test_accuracy": float(np.mean(p.argmax(1) == labels)),
                                 "top1_agreement_with_fp32": float(np.mean(p.argmax(1) == fp32_top1))}
                       for variant, p in predictions.items()}
    row["accuracy"]["ours (fake-quant, PyTorch, all test images)"] = {
        "test_accuracy": evaluate(qmodel, data.test, batch_size=EVAL_BATCH)}
    if args.qat_epochs:
        qat = prepare_qat(base, uniform_policy(base, 8), calibration=batches)
        qat_report = distilled_finetune(qat, base, data, config, epochs=args.qat_epochs)
        qat.eval()
        qat_file = export_qdq(qat, (1, 3, 32, 32), check_inputs=check)
        p = ort_predictions(qat_file, test_images)
        row["accuracy"]["ours after QAT"] = {"test_accuracy": float(np.mean(p.argmax(1) == labels)),
                                             "top1_agreement_with_fp32": float(np.mean(p.argmax(1) == fp32_top1)),
                                             "qat_epochs": args.qat_epochs, "qat": qat_report.to_dict()}
    row["eval_images"] = len(labels)
    row["train"] = {"spec": spec.name, "epochs": args.epochs, "train_s": train_s, "report": report.to_dict(),
                    "calibration_images": sum(len(b) for b in batches)}
    return row


def _ms(m: dict[str, float]) -> str:
    return f"{m['median_ms']:.2f} ({m['p10_ms']:.2f}–{m['p90_ms']:.2f})"


def _ops(summary: dict[str, int], counts: dict[str, int]) -> str:
    kernels = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()) if op.startswith("Q") and op not in
                        ("QuantizeLinear",))
    return f"{summary['int8']} int8 ({kernels}); {summary['float']} float; {summary['qdq']} Q/DQ"


def render(args: argparse.Namespace, results: dict[str, Any]) -> str:
    cpu = results["isa"]
    lines = [f"ISA: **{cpu['label']}** (flags {' '.join(cpu['flags'])}); ONNX Runtime "
             f"{results['backend']['versions']['onnxruntime']}, CPU provider, 1 thread, batch 1, all optimizations. "
             "Ours = `export_qdq` (int8 initializers, output quantizers, int8 residual adds, 7-bit weight codes); "
             "ORT = `quantize_static` per-channel on the fp32 file with the same calibration images (MinMax, "
             "`reduce_range=True`). All four files of a model timed in one interleaved `measure_onnx` call "
             f"(warmup,blocks,runs = {args.measure}): median ms (p10–p90), speed-up = fp32 median / median.", ""]
    header = ["model @ px", *(f"{v} ms" for v in VARIANTS), *(f"{v} ×" for v in VARIANTS[1:])]
    rows = [[f"{r['model']} @ {r['resolution']}", *(_ms(r["latency"][v]) for v in VARIANTS),
             *(f"{r['speedup'][v]:.2f}×" for v in VARIANTS[1:])] for r in results["rows"]]
    lines += md_table(header, rows)
    loads = [f"{r['model']} {r['load_average_after'][0]:.1f}" for r in results["rows"] if r.get("load_average_after")]
    if loads:
        lines += ["", "Load average (1 min) on the 2 cores right after each model's timing: " + ", ".join(loads) + "."]
    lines += ["", "**File size** (bytes, ratio to fp32) and **ORT's optimized graph** (int8 kernels; float ops; "
              "Q/DQ left; Transpose/Reorder not counted):"]
    rows = [[f"{r['model']}", v, f"{r['bytes'][v]:,} ({r['bytes']['fp32'] / r['bytes'][v]:.2f}×)",
             _ops(r["op_summary"][v], r["ops"][v]), ", ".join(f"{op} {n}" for op, n in sorted(r["ops"][v].items())
                                                             if op not in ("QuantizeLinear", "DequantizeLinear")
                                                             and not op.startswith("QLinear") and op != "QGemm")]
            for r in results["rows"] for v in VARIANTS]
    lines += md_table(["model", "file", "size (fp32 / this)", "optimized graph", "other ops"], rows)
    checks = [f"{r['model']}: {r['export_check']['relative']:.2f}× ({r['export_check']['max_abs_diff']:.2g} vs "
              f"{r['export_check']['quantization_error']:.2g}), top-1 {pct(r['export_check']['top1_agreement'])}"
              for r in results["rows"]]
    lines += ["", "Export check of ours (max |ORT − fake-quant| as a multiple of max |fake-quant − float|, "
              "tolerance 0.5; top-1 agreement): " + "; ".join(checks) + "."]
    cifar = next((r for r in results["rows"] if "accuracy" in r), None)
    if cifar:
        train_info = cifar["train"]
        lines += ["", f"**Accuracy on the CIFAR-10 subset** (`{train_info['spec']}`, trained fp32 {train_info['epochs']} "
                  f"epochs, recipe of bench.compression; {cifar['eval_images']:,} test images through ORT, batch 1; calibration "
                  f"{train_info['calibration_images']} train images):"]
        rows = [[variant, pct(acc["test_accuracy"]), pct(acc.get("top1_agreement_with_fp32"))]
                for variant, acc in cifar["accuracy"].items()]
        lines += md_table(["model", "test accuracy", "top-1 agreement with fp32 (ORT)"], rows)
    if results["wall_s"] is not None:
        lines += ["", f"Wall time {fmt(results['wall_s'] / 60, '.1f')} min."]
    return "\n".join(lines)


def _dump(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """The rows so far, in case a later part fails (a run takes a while on a shared machine)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("bench.int8", "nas.training.train"):
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    measure = MeasureSettings.parse(args.measure)
    start = time.perf_counter()
    if args.from_rows:
        rows = [row for path in args.from_rows for row in json.loads(path.read_text())]
        _finish(args, rows, None)
        return
    rows = []
    for name in args.models:
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        batches = [torch.randn(4, 3, 224, 224, generator=generator) for _ in range(2)]
        model = random_zoo_model(name, 224, batches)
        qmodel = calibrate(apply_policy(model, uniform_policy(model, 8)), batches).eval()
        check = torch.randn(4, 3, 224, 224, generator=generator)
        rows.append(compare(f"{name} (random weights)", model, qmodel, torch.cat(batches), check, measure)[0])
        _dump(args, rows)
    rows.append(cifar_part(args, measure))
    _dump(args, rows)
    _finish(args, rows, time.perf_counter() - start)


def _finish(args: argparse.Namespace, rows: list[dict[str, Any]], wall_s: float | None) -> None:
    results = {"args": json.loads(json.dumps(vars(args), default=str)), "isa": isa(),
               "backend": OnnxRuntimeBackend(threads=1).metadata(), "rows": rows, "wall_s": wall_s}
    body = render(args, results)
    print(body)
    if not args.no_write:
        publish("int8", "int8 on ONNX Runtime: ours vs quantize_static vs fp32", body, results)


if __name__ == "__main__":
    main()
