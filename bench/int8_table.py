"""An int8-aware latency table on ONNX Runtime: per-layer int8 entries vs whole int8 networks.

On a space at 32 px (default `proxyless`, CIFAR-sized, 10 classes), ORT CPU provider, 1 thread,
batch 1:

1. **Table.** `--archs` networks are sampled (seed 0); every layer they contain is measured at
   fp32 (`LocalMeasurer`, as `nas lut build`) and at int8 (`compress.quantize_backend.Int8Measurer`:
   the layer quantized as our export does, timed between uint8 tensors), plus the Q/DQ transitions.
2. **Validation.** The same networks measured whole -- fp32 as exported, int8 as `export_qdq` ships
   them -- all of a precision in one interleaved call (`validate_table`), against the table's
   prediction at that precision: the share within ±10%, the median |error|, Kendall tau and
   Spearman rho, raw sums and calibrated out of fold (5-fold, the table's affine calibration).
3. **Same rounds.** On a shared machine the load drifts between the table build and the
   validation minutes later. So for `--same-round` of the networks, the whole network and every
   one of its layers (and the int8 borders: quantize of the image, dequantize of the logits) are
   timed in one interleaved call, fp32 and int8 together: the raw sum's error with the machine's
   state shared by both sides.
4. **Borders.** Why a layer is timed between int8 tensors: on a few layers, the layer as
   `export_qdq` exports it alone (float in, float out) next to the layer between uint8 tensors and
   to a separately timed Q of its input plus DQ of its output, all in one interleaved call.

    python -m bench.int8_table                 # ~5 min on 2 quiet cores (10.7 min at load 10); writes BENCHMARKS.md + bench/results/int8_table.json
    python -m bench.int8_table --smoke         # ~1 min check of the script; JSON under --out only

The CPU's ISA is recorded with the figures: int8 speed differs by CPU (VNNI or not).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.int8 import isa
from bench.report import fmt, md_table, pct, publish
from compress.quantize_backend import Int8Measurer
from compress.quantize_layer_export import int8_layer_model, int8_network_model, qdq_model
from predictors.latency import LocalMeasurer, MeasureSettings, build_table, validate_table
from predictors.latency.backends import OnnxRuntimeBackend, export_onnx, fixed_input
from predictors.latency.measure import measure_prepared
from search_spaces.build import build_layer, build_model, layer_shapes
from search_spaces.spaces import get_space

logger = logging.getLogger("bench.int8_table")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--space", default="proxyless")
    add("--resolution", type=int, default=32)
    add("--classes", type=int, default=10)
    add("--archs", type=int, default=12, help="Sampled networks: the table holds their layers; they are validated.")
    add("--measure", default="10,15,10", help="warmup,blocks,block_runs of the latency protocol.")
    add("--border-layers", type=int, default=4, help="Layers of the border study (0: skip).")
    add("--same-round", type=int, default=3, help="Networks timed whole together with their layers (0: skip).")
    add("--seed", type=int, default=0)
    add("--smoke", action="store_true", help="4 networks, a short protocol, JSON only (no BENCHMARKS.md).")
    add("--out", type=Path, default=Path("runs/bench/int8_table"), help="Table file and JSON go here.")
    add("--no-write", action="store_true", help="Do not write BENCHMARKS.md / bench/results.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.archs, args.measure, args.border_layers, args.same_round, args.no_write = 4, "1,3,3", 1, 1, True
    return args


class ArchOps:
    """The parts of a space `build_table` and `validate_table` use, restricted to a few networks:
    their layers are the candidate ops, and sampling draws among them."""

    def __init__(self, space: Any, archs: list) -> None:
        self.space, self.archs = space, archs
        self.name, self.options = space.name, space.options
        self.resolution, self.num_classes = space.resolution, space.num_classes

    def candidate_ops(self) -> list:
        unique = {layer.signature: layer for arch in self.archs for layer in layer_shapes(arch)}
        return list(unique.values())

    def sample(self, rng: np.random.Generator) -> Any:
        return self.archs[int(rng.integers(len(self.archs)))]


def sample_archs(space: Any, count: int, seed: int) -> list:
    rng, archs, seen = np.random.default_rng(seed), [], set()
    while len(archs) < count:
        arch = space.sample(rng)
        if arch.content_hash() not in seen:
            seen.add(arch.content_hash())
            archs.append(arch)
    return archs


def figures(report: Any) -> dict[str, Any]:
    measured = np.array(report.measured_ms)
    out = {"samples": report.samples, "calibration": report.calibration.to_dict(), "measured_ms": report.measured_ms}
    for label, predicted in (("raw", report.predicted_ms), ("calibrated_out_of_fold", report.calibrated_ms)):
        predicted = np.array(predicted)
        error = np.abs(predicted - measured) / measured
        summary = report.raw if label == "raw" else report.calibrated
        out[label] = {"within_10pct": summary.within_10pct, "median_abs_error": float(np.median(error)),
                      "mape": summary.mape, "kendall_tau": summary.kendall_tau, "spearman": summary.spearman,
                      "predicted_ms": predicted.tolist()}
    return out


def border_study(layers: list, measure: MeasureSettings) -> list[dict[str, Any]]:
    """Per layer: as exported alone (float borders), between uint8 tensors, and Q(in) + DQ(out)."""
    backend, rows = OnnxRuntimeBackend(threads=1), []
    for layer in layers:
        module = build_layer(layer)
        inner, borders = int8_layer_model(module, layer.input_shape)
        alone = int8_network_model(module, layer.input_shape)  # export_qdq of the layer alone: float in and out
        out_shape = (1, layer.out_channels) if layer.kind == "head" else (1, layer.out_channels, layer.out_size,
                                                                           layer.out_size)
        with backend.pinned():
            ops = [backend.prepare_onnx(alone, layer.input_shape),
                   backend.prepare_onnx(inner, tuple(borders["input_shape"]), np.dtype(borders["input"])),
                   *(backend.prepare_onnx(model, shape, dtype) for shape, (model, dtype) in
                     ((layer.input_shape, qdq_model("quantize", layer.input_shape)),
                      (out_shape, qdq_model("dequantize", out_shape))))]
            try:
                alone_ms, inner_ms, q_ms, dq_ms = (m.median_ms for m in measure_prepared(ops, **measure.to_dict()))
            finally:
                for op in ops:
                    op.close()
        rows.append({"layer": layer.signature, "alone_ms": alone_ms, "between_int8_ms": inner_ms, "quantize_in_ms": q_ms,
                     "dequantize_out_ms": dq_ms, "alone_minus_qdq_ms": alone_ms - q_ms - dq_ms, "borders": borders})
        logger.info("%s: alone %.4f, between int8 %.4f, Q+DQ %.4f ms", layer.signature, alone_ms, inner_ms, q_ms + dq_ms)
    return rows


def same_round(archs: list, measure: MeasureSettings) -> list[dict[str, Any]]:
    """Per network: whole and layer by layer, fp32 and int8, in one interleaved call (module docstring)."""
    backend, rows = OnnxRuntimeBackend(threads=1), []
    for arch in archs:
        shape, logits = (1, arch.in_channels, arch.resolution, arch.resolution), (1, arch.num_classes)
        model = build_model(arch).eval()
        items = [(export_onnx(model, fixed_input(shape)), shape, np.float32),
                 (int8_network_model(model, shape), shape, np.float32)]
        for layer in layer_shapes(arch):
            module = build_layer(layer).eval()
            inner, borders = int8_layer_model(module, layer.input_shape)
            items += [(export_onnx(module, fixed_input(layer.input_shape)), layer.input_shape, np.float32),
                      (inner, tuple(borders["input_shape"]), np.dtype(borders["input"]))]
        for kind, tensor in (("quantize", shape), ("dequantize", logits)):
            model_bytes, dtype = qdq_model(kind, tensor)
            items.append((model_bytes, tensor, dtype))
        with backend.pinned():
            ops = [backend.prepare_onnx(*item) for item in items]
            try:
                medians = [m.median_ms for m in measure_prepared(ops, **measure.to_dict())]
            finally:
                for op in ops:
                    op.close()
        sums = {"fp32": sum(medians[2:-2:2]), "int8": sum(medians[3:-2:2]) + medians[-2] + medians[-1]}
        whole = {"fp32": medians[0], "int8": medians[1]}
        rows.append({"arch": arch.content_hash(), "whole_ms": whole, "raw_sum_ms": sums,
                     "error": {p: sums[p] / whole[p] - 1 for p in whole}})
        logger.info("same round: whole fp32 %.3f / int8 %.3f ms, sums %.3f / %.3f ms", whole["fp32"], whole["int8"],
                    sums["fp32"], sums["int8"])
    return rows


def border_layers(candidates: list, count: int) -> list:
    """A plain block, a residual block, the stem and the head (the first `count` of them)."""
    blocks = [layer for layer in candidates if layer.kind == "block"]
    residual = [b for b in blocks if b.part.stride == 1 and b.in_channels == b.out_channels]
    plain = [b for b in blocks if b not in residual]
    kinds = [plain[:1], residual[:1], [c for c in candidates if c.kind == "stem"][:1],
             [c for c in candidates if c.kind == "head"][:1]]
    return [layer for kind in kinds for layer in kind][:count]


def run(args: argparse.Namespace) -> dict[str, Any]:
    measure = MeasureSettings.parse(args.measure)
    space = get_space(args.space, resolution=args.resolution, num_classes=args.classes)
    archs = sample_archs(space, args.archs, args.seed)
    ops = ArchOps(space, archs)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "table.json"
    if path.exists():
        path.unlink()  # a fresh table: each run measures everything in the same conditions
    load = {"before": list(os.getloadavg())}
    start = time.perf_counter()
    measurers = {"fp32": LocalMeasurer("onnxruntime", threads=1, settings=measure),
                 "int8": Int8Measurer(threads=1, settings=measure)}
    build_s = {}
    for precision, measurer in measurers.items():
        t0 = time.perf_counter()
        table = build_table(ops, measurer, path, precision=precision)
        build_s[precision] = time.perf_counter() - t0
    load["after_build"] = list(os.getloadavg())
    validation = {}
    for precision, measurer in measurers.items():
        report = validate_table(table, ops, measurer, samples=len(archs), seed=args.seed, precision=precision,
                                plot_path=args.out / f"validation.{precision}.png")
        validation[precision] = figures(report)
    table.save(path)
    load["after_validation"] = list(os.getloadavg())
    speedups = np.array(validation["fp32"]["measured_ms"]) / np.array(validation["int8"]["measured_ms"])
    return {
        "space": args.space, "resolution": args.resolution, "classes": args.classes, "archs": len(archs),
        "layers": {p: len(table.entries_for(p)) for p in table.precisions},
        "transitions": len(table.sections["int8"].transitions), "build_s": build_s, "measure": measure.to_dict(),
        "validation": validation, "measured_speedup_int8": {"median": float(np.median(speedups)),
                                                            "min": float(speedups.min()), "max": float(speedups.max())},
        "same_round": same_round(archs[: args.same_round], measure),
        "borders": border_study(border_layers(ops.candidate_ops(), args.border_layers), measure),
        "isa": isa(), "backend": measurers["int8"].metadata(), "load_average": load,
        "wall_s": time.perf_counter() - start,
    }


def render(results: dict[str, Any]) -> str:
    cpu, versions = results["isa"], results["backend"]["versions"]
    lines = [f"ISA: **{cpu['label']}**; ONNX Runtime {versions.get('onnxruntime')}, CPU provider, 1 thread, batch 1. "
             f"`{results['space']}` at {results['resolution']} px: {results['archs']} sampled networks, their "
             f"{results['layers']['int8']} distinct layers measured at fp32 and int8 (+ {results['transitions']} "
             "Q/DQ transitions); the same networks timed whole (int8: `export_qdq` as shipped). Calibrated = "
             "the table's affine calibration, out of fold (5-fold).", ""]
    rows = []
    for precision, v in results["validation"].items():
        for label in ("raw", "calibrated_out_of_fold"):
            f = v[label]
            rows.append([precision, label.replace("_", " "), pct(f["within_10pct"]), pct(f["median_abs_error"]),
                         pct(f["mape"]), fmt(f["kendall_tau"]), fmt(f["spearman"])])
    lines += md_table(["precision", "prediction", "within ±10%", "median |error|", "MAPE", "Kendall τ", "Spearman ρ"],
                      rows)
    s = results["measured_speedup_int8"]
    lines += ["", f"Measured whole-network int8 speed-up over fp32 on these networks: median {s['median']:.2f}× "
              f"(range {s['min']:.2f}–{s['max']:.2f}×)."]
    if results["same_round"]:
        lines += ["", "**Same rounds**: each network timed whole in one interleaved call with all its layers, fp32 "
                  "and int8 (int8 sum: layers + quantize of the image + dequantize of the logits); error of the "
                  "raw sum:", ""]
        lines += md_table(["network", "fp32 whole ms", "fp32 sum ms", "fp32 error", "int8 whole ms", "int8 sum ms",
                           "int8 error"],
                          [[r["arch"][:8], fmt(r["whole_ms"]["fp32"]), fmt(r["raw_sum_ms"]["fp32"]),
                            pct(r["error"]["fp32"]), fmt(r["whole_ms"]["int8"]), fmt(r["raw_sum_ms"]["int8"]),
                            pct(r["error"]["int8"])] for r in results["same_round"]])
    if results["borders"]:
        lines += ["", "**Layer borders** (ms, one interleaved call per layer): the layer exported alone (float in, "
                  "float out), the layer between uint8 tensors (what the table stores), and Q(input) + DQ(output) "
                  "timed apart:", ""]
        lines += md_table(["layer", "alone", "between int8", "Q + DQ", "alone − (Q + DQ)"],
                          [[b["layer"], fmt(b["alone_ms"], ".4f"), fmt(b["between_int8_ms"], ".4f"),
                            fmt(b["quantize_in_ms"] + b["dequantize_out_ms"], ".4f"),
                            fmt(b["alone_minus_qdq_ms"], ".4f")] for b in results["borders"]])
    load = results["load_average"]
    lines += ["", f"Load average (1 min) before / after build / after validation: {load['before'][0]:.2f} / "
              f"{load['after_build'][0]:.2f} / {load['after_validation'][0]:.2f}. Wall time "
              f"{results['wall_s'] / 60:.1f} min."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bench.int8_table").setLevel(logging.INFO)
    results = run(args)
    (args.out / "int8_table.json").write_text(json.dumps(results, indent=1, default=str))
    text = render(results)
    print(text)
    if not args.no_write:
        publish("int8_table", "int8-aware latency table (ONNX Runtime)", text, results)


if __name__ == "__main__":
    main()
