"""`nas lut build|predict|validate|import|info`: latency lookup tables on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import fail_on_user_error, load_arch, make_measurer
from search_spaces.errors import InputFileError, OptionError

console = Console()
lut_app = typer.Typer(no_args_is_help=True, help="Measure, import, validate and query latency lookup tables.")


def register(app: typer.Typer) -> None:
    app.add_typer(lut_app, name="lut")


PRECISION_HELP = ("fp32 | int8 | fp32,int8. int8 entries time each layer as our int8 export runs it inside an "
                  "int8 network (ONNX Runtime only, this machine only); one file holds several precisions.")


def one_precision(text: str) -> str:
    from predictors.latency import parse_precisions

    chosen = parse_precisions(text)
    if len(chosen) != 1:
        raise OptionError(f"--precision={text!r}: expected one precision here (fp32 or int8)")
    return chosen[0]


def precision_measurer(precision: str, backend: str, threads: int, device: str | None, token: str | None):
    """The measurer of one precision: fp32 as before; int8 our export on ONNX Runtime, here."""
    if precision == "fp32":
        if backend == "onnxruntime-int8":  # registered by compress.quantize_backend; a table names its precision
            raise OptionError("--backend onnxruntime-int8: use --backend onnxruntime --precision int8 (the table then "
                              "records its int8 entries as int8)")
        return make_measurer(backend, threads, device, token)
    if device:
        raise OptionError(f"--precision {precision} with --device: the device agent measures fp32 layers only (it "
                          "never runs models it is sent, and the int8 graph is made by this machine's exporter); "
                          "drop --device, or build fp32 only")
    if backend != "onnxruntime":
        raise OptionError(f"--precision {precision} runs on --backend onnxruntime only (got {backend!r}): the int8 "
                          "export is an ONNX QDQ graph")
    from compress.quantize_backend import Int8Measurer

    return Int8Measurer(threads=threads)


@lut_app.command("build")
@fail_on_user_error
def build(
    space: str = typer.Option(..., help="Search space name (see `nas spaces`)."),
    out: Path = typer.Option(..., help="Table file (JSON). An existing file of the same settings is resumed."),
    backend: str = typer.Option("onnxruntime", help="torch | onnxruntime | cuda (ignored with --device)."),
    threads: int = typer.Option(1, min=1, help="Threads the backend may use; recorded in the table."),
    resolution: int = typer.Option(224, min=8, help="Input resolution of the space."),
    num_classes: int = typer.Option(1000, min=2, help="Classes of the head."),
    device: Optional[str] = typer.Option(None, help="URL of a device agent (`nas device serve`) to measure on."),
    token: Optional[str] = typer.Option(None, envvar="NAS_DEVICE_TOKEN", help="The agent's token."),
    resume: bool = typer.Option(False, "--resume", help="Require OUT to exist and only measure what it lacks."),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
) -> None:
    """Measure every candidate op of a space (resumable; progress bar with time left)."""
    from predictors.latency import build_table, parse_precisions
    from search_spaces.spaces import get_space

    if resume and not out.exists():
        raise InputFileError(f"--resume: {out} does not exist (drop --resume to start a new table)")
    precisions = parse_precisions(precision)
    search_space = get_space(space, resolution=resolution, num_classes=num_classes)
    measurers = {p: precision_measurer(p, backend, threads, device, token) for p in precisions}  # refuse first
    for name, measurer in measurers.items():
        table = build_table(search_space, measurer, out, show_progress=True, precision=name)
    counts = ", ".join(f"{len(table.entries_for(p))} {p}" for p in table.precisions)
    console.print(f"{out}: {counts} entries, {table.metadata.get('backend')} x{table.metadata.get('threads')} "
                  f"on {table.metadata.get('device')}")


@lut_app.command("predict")
@fail_on_user_error
def predict(
    table_path: Path = typer.Argument(..., metavar="TABLE"),
    arch: str = typer.Argument(..., metavar="ARCH", help="A spec JSON file or zoo:NAME."),
    as_json: bool = typer.Option(False, "--json", help="Print the total and each layer's key and latency."),
    raw: bool = typer.Option(False, "--raw", help="Plain sum, without the table's calibration."),
    precision: str = typer.Option("fp32", help="fp32 | int8: every layer at this precision (a table's only)."),
) -> None:
    """Predicted latency of one architecture from a table (or a model from `nas latency fit`)."""
    from predictors.latency import FP32, LatencyTable, arch_signatures
    from predictors.latency.predictor import load_latency_predictor

    table = load_latency_predictor(table_path)
    spec = load_arch(arch, resolution=table.resolution, num_classes=table.num_classes)
    chosen = one_precision(precision)
    if chosen != FP32 and not isinstance(table, LatencyTable):
        raise OptionError(f"--precision {chosen} needs a latency table built with `nas lut build --precision {chosen}`"
                          f"; {table_path} is a fitted model (fp32)")
    if chosen == FP32:
        layers, total = table.layer_latencies(spec), table.predict(spec, calibrated=not raw)
        calibrated = table.calibration is not None and not raw
    else:  # the layers and the borders of the float input and output, raw
        costs = table.layer_costs(spec, [chosen] * len(arch_signatures(spec)), calibrated=False)
        layers = [(cost.name, cost.key, cost.ms) for cost in costs]
        total = table.predict(spec, calibrated=not raw, precision=chosen)
        calibrated = table.calibration_for(chosen) is not None and not raw
    if as_json:
        print(json.dumps({
            "latency_ms": total,
            "precision": chosen,
            "raw_sum_ms": sum(ms for _, _, ms in layers),
            "calibrated": calibrated,
            "layers": [{"layer": name, "key": key, "latency_ms": ms} for name, key, ms in layers],
        }, indent=2))
    else:
        print(f"{total:.4f} ms")


@lut_app.command("validate")
@fail_on_user_error
def validate(
    table_path: Path = typer.Argument(..., metavar="FILE"),
    samples: int = typer.Option(50, min=4, help="Architectures to measure end to end."),
    seed: int = typer.Option(0),
    plot: Optional[Path] = typer.Option(None, help="Scatter PNG (default: next to the table)."),
    device: Optional[str] = typer.Option(None, help="Agent URL, when the table was built through one."),
    token: Optional[str] = typer.Option(None, envvar="NAS_DEVICE_TOKEN"),
    precision: str = typer.Option("fp32", help="fp32 | int8: validate and calibrate this precision's entries "
                                               "(int8: sampled networks exported by export_qdq, timed whole)."),
) -> None:
    """Measure sampled architectures end to end; report fidelity; store a calibration in the table."""
    from predictors.latency import LatencyTable, LatencyTableError, validate_table
    from search_spaces.spaces import get_space

    table = LatencyTable.load(table_path)
    if not table.space:
        raise LatencyTableError(f"{table_path} names no search space (imported tables cannot be re-measured here)")
    # a table built for a restricted space (`nas search --space-options`) samples from that space only
    space = get_space(table.space, resolution=table.resolution, num_classes=table.num_classes,
                      **table.metadata.get("space_options", {}))
    chosen = one_precision(precision)
    table.entries_for(chosen)  # refuses a precision the table lacks, naming the ones it holds
    measurer = precision_measurer(chosen, table.metadata.get("backend", "onnxruntime"), table.metadata.get("threads", 1),
                                  device, token)
    from predictors.latency.provenance import measured_elsewhere

    if reason := measured_elsewhere(table.metadata, measurer.metadata()):
        # a calibration from another device would be stored in this table as if it were its own
        raise LatencyTableError(f"{table_path}: not validated: {reason}; "
                                + ("pass --device URL of that agent" if table.metadata.get("remote_url")
                                   else "validate it on the machine that built it"))
    suffix = ".validation.png" if chosen == "fp32" else f".validation.{chosen}.png"
    plot = plot or table_path.with_suffix(suffix)
    report = validate_table(table, space, measurer, samples=samples, seed=seed, plot_path=plot, precision=chosen)
    table.save(table_path)
    summary = Table(title=f"{table_path.name} [{chosen}]: {report.samples} architectures")
    for column in ("prediction", "RMSE ms", "MAPE", "within ±10%", "Kendall tau", "Spearman rho"):
        summary.add_column(column)
    for label, figures in (("raw sum", report.raw), ("calibrated (out-of-fold)", report.calibrated)):
        summary.add_row(label, f"{figures.rmse_ms:.4f}", f"{100 * figures.mape:.2f}%",
                        f"{100 * figures.within_10pct:.0f}%", f"{figures.kendall_tau:.3f}", f"{figures.spearman:.3f}")
    console.print(summary)
    console.print(f"calibration (stored): {report.calibration}; plot: {plot}")


@lut_app.command("import")
@fail_on_user_error
def import_(
    source: Path = typer.Argument(..., metavar="FILE"),
    format: str = typer.Option("proxyless", "--format", help="proxyless (ProxylessNAS/OFA mobile YAML) | "
                               "hwnasbench (HW-NAS-Bench FBNet latencies, help_fbnet_latency.json)."),
    out: Path = typer.Option(..., help="Where to write the table (JSON)."),
    device: Optional[str] = typer.Option(None, help="proxyless: the device name to record (the YAML names none); "
                                         "hwnasbench: which device to import (pixel3, raspi4, eyeriss, fpga; "
                                         "the phones pixel2, samsung_a50, samsung_s7, essential_ph_1 as a fit)."),
) -> None:
    """Convert a published latency table into ours."""
    from predictors.latency import import_table

    if not source.is_file():
        raise InputFileError(f"FILE {source} does not exist (expected a {format} latency table to import)")
    options = {"device": device} if device else {}
    table = import_table(format, source, **options)
    table.save(out)
    if format == "hwnasbench":
        exact = "exactly" if table.metadata.get("exact") else "as a least-squares fit (not additive)"
        console.print(f"{out}: {len(table)} entries reproducing {table.metadata.get('source_archs')} architectures' "
                      f"latencies {exact}; max error {table.metadata.get('max_abs_error_ms'):.3g} ms")
    else:
        console.print(f"{out}: {len(table)} entries from {table.metadata.get('source_keys')} keys of {source}")


@lut_app.command("info")
@fail_on_user_error
def info(table_path: Path = typer.Argument(..., metavar="FILE")) -> None:
    """Metadata, entry count and stored validation figures of a table."""
    from predictors.latency import LatencyTable

    table = LatencyTable.load(table_path)
    print(json.dumps({
        "space": table.space, "resolution": table.resolution, "num_classes": table.num_classes,
        "entries": len(table), "metadata": table.metadata,
        "calibration": table.calibration.to_dict() if table.calibration else None, "validation": table.validation,
        **({"precisions": {p: {"entries": len(section.entries), "transitions": len(section.transitions),
                               "metadata": section.metadata, "validation": section.validation,
                               "calibration": section.calibration.to_dict() if section.calibration else None}
                           for p, section in table.sections.items()}} if table.sections else {}),
    }, indent=2))
