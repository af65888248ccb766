"""MODEL_CARD.md for an export: what the model is, what it costs, how it was found and checked.

Everything on the card comes from files (config.json, trials.jsonl, best/metrics.json, the latency
table, policy JSONs) or is computed from the spec (`predictors.cost`), so it can be regenerated;
anything missing is said to be missing rather than left out silently.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from nas.rundir.records import BestMetrics
from nas.rundir.runinfo import RunInfo
from search_spaces.build import layer_shapes
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, SEStyle, StemSpec

if TYPE_CHECKING:
    from nas.artifacts.export_report import ExportReport
    from predictors.latency import LatencyTable

logger = logging.getLogger(__name__)

__all__ = ["CARD_NAME", "architecture_rows", "find_policies", "write_model_card"]

CARD_NAME = "MODEL_CARD.md"
POLICY_SCHEMA = "hwnas-compress-policy"
ROW_COLUMNS = ("stage", "layer", "op", "kernel", "expansion (mid ch)", "SE", "activation", "out ch", "stride",
               "input shape", "params", "MACs", "LUT ms")


def _stage_of_block(arch: ArchSpec) -> dict[int, int]:
    from compress.scale import stages  # the stage rule compound scaling uses: one definition

    return {index: number for number, block_range in enumerate(stages(arch), start=1) for index in block_range}


def _expansion(part: BlockSpec, in_channels: int) -> str:
    if part.op is Op.DSCONV:
        return "-"
    mid = part.mid(in_channels)
    return f"mid {mid}" if part.mid_channels is not None else f"{part.expand_ratio:g} ({mid})"


def _se(part: BlockSpec) -> str:
    if not part.se_ratio:
        return "-"
    style = "" if part.se_style is SEStyle.EFFICIENTNET else f" {part.se_style.value}"
    return f"{part.se_ratio:g}{style}"


def architecture_rows(arch: ArchSpec, per_layer_cost: dict[str, tuple[int, int]],
                      per_layer_ms: dict[str, float] | None) -> list[list[str]]:
    """One row per layer (stem, each block, head), in `ROW_COLUMNS` order."""
    stage_of = _stage_of_block(arch)
    rows = []
    for layer in layer_shapes(arch):
        part = layer.part
        shape = f"{layer.in_channels}x{layer.in_size}x{layer.in_size}"
        if isinstance(part, StemSpec):
            conv = "conv" + ("" if part.batch_norm else " (bias, no BN)")
            cells = ["stem", layer.name, conv + (" + maxpool" if part.pool else ""), str(part.kernel), "-", "-",
                     part.activation.value, str(part.out_channels), str(part.stride * (2 if part.pool else 1))]
        elif isinstance(part, HeadSpec):
            inner = [f"conv {part.conv_channels}" if part.conv_channels else "",
                     f"hidden {part.hidden_channels}" if part.hidden_channels else ""]
            kind = "conv1x1 + pool + fc" if part.conv_channels else "pool + fc"
            kind = "conv1x1 classifier + pool" if part.classifier == "conv" else kind
            cells = ["head", layer.name, kind,
                     "1" if part.conv_channels else "-", " / ".join(x for x in inner if x) or "-", "-",
                     part.activation.value, f"{layer.out_channels} classes", "1"]
        else:
            index = int(layer.name.split(".")[1])
            cells = [str(stage_of.get(index, "?")), layer.name, part.op.value, str(part.kernel),
                     _expansion(part, layer.in_channels), _se(part), part.activation.value,
                     str(part.out_channels), str(part.stride)]
        params, macs = per_layer_cost.get(layer.name, (0, 0))
        latency = (per_layer_ms or {}).get(layer.name)
        rows.append(cells + [shape, f"{params:,}", f"{macs:,}", f"{latency:.4f}" if latency is not None else "-"])
    return rows


def find_policies(*directories: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Compression policy files (the shared envelope of `compress.policy`) in these directories."""
    found = []
    for directory in directories:
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            try:
                data = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and data.get("schema") == POLICY_SCHEMA:
                found.append((path, data))
    return found


def _policy_lines(policies: list[tuple[Path, dict[str, Any]]], base: Path) -> list[str]:
    if not policies:
        return [("None: the exported weights are the searched fp32 model (no policy JSON in best/ or the export). "
                 "model.int8.onnx, when exported, applies a uniform 8-bit policy (below).")]
    lines = []
    for path, data in policies:
        layers = data.get("layers") or {}
        values = Counter(json.dumps(value, sort_keys=True) for value in layers.values())
        common = ", ".join(f"{k} x{n}" for k, n in values.most_common(4))
        lines.append(f"- `{_relative(path, base)}`: kind **{data.get('kind')}**, {len(layers)} layers "
                     f"({common or 'none'}); settings `{json.dumps(data.get('settings') or {})}`")
    return lines


def _variant_lines(run: Path) -> list[str]:
    """`nas compress` results of this run (run/compress/<kind>/): other models, not this export."""
    found = find_policies(*sorted((run / "compress").glob("*"))) if (run / "compress").is_dir() else []
    if not found:
        return []
    listed = ", ".join(f"`{_relative(path.parent, run)}` ({data.get('kind')})" for path, data in found)
    return [f"Compressed variants of this run (separate models, not exported here): {listed}.", ""]


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    escape = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in escape)]


def _percent(metrics: BestMetrics | None, name: str) -> str:
    value = getattr(metrics, name, None)  # None also when best/ has no metrics.json (yet)
    return f"{100 * value:.2f}% (`{name}`)" if value is not None else "not recorded"


def _ms(value: float | None) -> str:
    return f"{value:.4f} ms" if value is not None else "n/a"


def _int8_samples(report: ExportReport) -> str:
    item = report.result("onnx-int8")
    return str(item.details.get("samples", "?")) if item is not None else "no"


def _measured_text(report: ExportReport, notes: list[str]) -> str:
    measured = report.measured_latency
    if not measured:
        return "not measured (--no-measure, or no latency table)"
    if measured.get("table_device") and measured.get("table_device") != measured.get("device"):
        notes.append(f"latency measured on {measured.get('device')}, the table on {measured.get('table_device')}")
    return (f"{measured['median_ms']:.4f} ms median (p10 {measured['p10_ms']:.4f}, p90 {measured['p90_ms']:.4f}, "
            f"{measured['runs']} runs), {measured['backend']} x{measured['threads']} thread(s) on "
            f"{measured.get('device')} ({measured.get('cpu_model')})")


def _summary(info: RunInfo, report: ExportReport, cost: Any, table: LatencyTable | None, predicted: float | None,
             notes: list[str]) -> list[str]:
    arch = report.arch
    meta = table.metadata if table is not None else {}
    return ["## Summary", "", *_table(["", ""], [
        ["task", f"image classification, {arch.num_classes} classes"],
        ["dataset", (f"`{info.dataset or 'not recorded'}` (inputs normalised per channel as "
                     "`nas.training.data.load_dataset` does)")],
        ["input", f"1 x {arch.in_channels} x {arch.resolution} x {arch.resolution} (batch axis dynamic in ONNX)"],
        ["validation accuracy, search trial", _percent(info.best_metrics, "val_accuracy")],
        ["validation accuracy, final retrain", _percent(info.best_metrics, "final_val_accuracy")],
        ["test accuracy", _percent(info.best_metrics, "test_accuracy")],
        ["parameters", f"{cost.params:,}"],
        ["MACs", f"{cost.macs:,} (conv + linear multiply-adds, `predictors.cost`)"],
        ["latency, LUT-predicted", f"{_ms(predicted)} ({table.label if table is not None else 'no table'})"],
        ["latency, measured", _measured_text(report, notes)],
        ["table device", (", ".join(str(x) for x in (meta.get("device"), meta.get("cpu_model")) if x) or "n/a")
                         + f" (backend {meta.get('backend', 'n/a')} x{meta.get('threads', '?')} thread(s))"],
    ]), ""]


def _search(info: RunInfo) -> list[str]:
    counts = {status: info.count([status]) for status in ("ok", "infeasible", "failed")}
    return ["## Search", "", *_table(["", ""], [
        ["space", info.space or "not recorded"],
        ["strategy", info.strategy or "not recorded"],
        ["latency budget", f"{info.budget_ms:g} ms ({info.constraint or 'constraint not recorded'})"
                           if info.budget_ms is not None else "not recorded"],
        ["trial budget", str(info.planned_trials or "not recorded")],
        ["trials finished", (f"{len(info.trials)} ({counts['ok']} ok, {counts['infeasible']} infeasible, "
                             f"{counts['failed']} failed)")],
    ]), ""]


def _architecture(arch: ArchSpec, cost: Any, per_layer_ms: dict[str, float] | None) -> list[str]:
    per_layer_cost = {layer.name: (layer.params, layer.macs) for layer in cost.per_layer}
    return ["## Architecture", "",
            ("Stages group consecutive blocks of one op and width (a stride-2 block starts a new one). Expansion is "
             "the ratio (inner channels); params, MACs and LUT latency are per layer."), "",
            *_table(ROW_COLUMNS, architecture_rows(arch, per_layer_cost, per_layer_ms)), "",
            "Blocks as strings: " + ", ".join(f"`{text}`" for text in arch.block_strings()), ""]


def _exported_files(report: ExportReport) -> list[str]:
    return ["## Exported files", "",
            (f"ONNX opset {report.opset}; verification inputs: seeded N(0,1) images at batch 2 (the ONNX models were "
             f"exported at batch 1 with a dynamic batch axis). int8: uniform 8-bit weights (int8, 7-bit codes) and "
             f"activations, BN folded, int8 residual adds, "
             f"calibrated on {report.calibration} inputs, checked on {_int8_samples(report)} inputs against the "
             "fake-quantized PyTorch model, relative to the quantization error max |fake-quant - float| "
             "(`compress.quantize_export`)."), "",
            *_table(["format", "file", "size", "verified by", "tolerance", "max observed |diff|"], [
                [item.format, f"`{item.path.name}`", f"{item.size_bytes:,} B", item.criterion,
                 ", ".join(f"{k}={v:g}" for k, v in item.tolerance.items()) or "exact", f"{item.max_abs_diff:.3g}"
                 + (f" ({item.details['relative']:.2f} x the quantization error; top-1 vs fp32 "
                    f"{100 * item.details['top1_agreement_fp32']:.0f}%)"
                    if item.format == "onnx-int8" else "")]
                for item in report.formats
            ]), *_int8_latency(report), ""]


def _int8_latency(report: ExportReport) -> list[str]:
    item = report.result("onnx-int8")
    timed = item.details.get("latency") if item is not None else None
    if not timed:
        return []
    fp32, int8 = timed["fp32"], timed["int8"]
    return ["", (f"Measured int8 latency (`{item.path.name}`): {int8['median_ms']:.4f} ms median vs fp32 "
                 f"{fp32['median_ms']:.4f} ms ({timed['speedup']:.2f}x), ONNX Runtime CPU, {timed['threads']} thread, "
                 f"batch 1, timed interleaved; CPU ISA: {timed['isa']} (int8 speed-ups differ by CPU).")]


def _how_to_load(report: ExportReport) -> list[str]:
    arch = report.arch
    return ["## How to load", "", "```python",
            "import torch, nas.artifacts.export   # load() rebuilds from arch.json + weights.safetensors: no pickle",
            f"model = nas.artifacts.export.load(\"{_relative(report.out_dir, Path.cwd())}\")  # checks arch hash, shapes, digests",
            f"logits = model(torch.randn(1, {arch.in_channels}, {arch.resolution}, {arch.resolution}))  # eval mode",
            "```", "",
            ("TorchScript (`model.torchscript.pt`) is a pickle: load it only if you made it yourself. `nas load` never "
             "opens it."), ""]


def write_model_card(info: RunInfo, report: ExportReport, model: nn.Module, table: LatencyTable | None) -> Path:
    """Write MODEL_CARD.md into the export directory and return its path."""
    from predictors.cost import count
    from predictors.latency import MissingEntriesError

    arch = report.arch
    cost = count(model)
    notes = list(info.notes)
    per_layer_ms, predicted = None, None
    if table is not None:
        try:
            per_layer_ms = {name: ms for name, _, ms in table.layer_latencies(arch)}
            predicted = table.predict(arch)
        except MissingEntriesError as error:
            notes.append(f"the latency table lacks {len(error.keys)} layer(s) of this model: no LUT prediction")
    lines = [
        f"# Model card: {arch.name or info.name}", "",
        f"Exported from run `{info.name}`, {report.source}; architecture hash `{arch.content_hash()}`.", "",
        *_summary(info, report, cost, table, predicted, notes),
        *_search(info),
        "## Compression policy", "",
        *_policy_lines(find_policies(info.rundir.best_dir, report.out_dir), info.path), "",
        *_variant_lines(info.path),
        *_architecture(arch, cost, per_layer_ms),
        *_exported_files(report),
        *_how_to_load(report),
    ]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    path = report.out_dir / CARD_NAME
    path.write_text("\n".join(lines))
    logger.info("wrote %s", path)
    return path
