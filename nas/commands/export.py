"""`nas export RUN`: verified deployable files + MODEL_CARD.md."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import error_console, fail_on_user_error


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


@fail_on_user_error
def export_command(
    run: Path = typer.Argument(..., help="Run directory, e.g. runs/NAME."),
    format: str = typer.Option("json,safetensors,torchscript,onnx,onnx-int8", "--format", "-f",
                               help="Comma-separated formats; json and safetensors are always written."),
    trial: Optional[int] = typer.Option(None, help="Export this trial (only possible for the one in best/)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default RUN/export/)."),
    no_measure: bool = typer.Option(False, "--no-measure", help="Skip the end-to-end latency measurement."),
    calibration: str = typer.Option("random", help="int8 calibration inputs: random (seeded N(0,1)) or dataset."),
) -> None:
    """Export the best model of a run; every file is checked against PyTorch's outputs."""
    from nas.artifacts.export import ExportError, export_run

    console = Console()
    try:
        report = export_run(run, format, out=out, trial=trial, measure=not no_measure, calibration=calibration,
                            progress=lambda message: console.print(f"[dim]{message}...[/]"))
    except ExportError as error:
        error_console.print(f"[bold red]export failed:[/] {error}", highlight=False)
        raise typer.Exit(1) from None
    table = Table(title=f"{run}: exported {report.source} to {report.out_dir}")
    for column in ("format", "file", "size", "max |diff|", "tolerance", "seconds"):
        table.add_column(column, justify="left" if column in ("format", "file", "tolerance") else "right",
                         no_wrap=column in ("format", "file"))
    for item in report.formats:
        table.add_row(item.format, item.path.name, f"{item.size_bytes:,}", f"{item.max_abs_diff:.3g}",
                      ", ".join(f"{k}={v:g}" for k, v in item.tolerance.items()) or "exact", f"{item.seconds:.2f}")
    console.print(table)
    if report.measured_latency:
        measured = report.measured_latency
        console.print(f"measured latency: {measured['median_ms']:.4f} ms ({measured['backend']}, "
                      f"{measured['threads']} thread(s), on this machine)")
        if measured.get("not_the_tables_device"):
            console.print(f"[yellow]not comparable with the table's prediction: {measured['not_the_tables_device']}[/]")
    if report.card_path:
        console.print(f"model card: {report.card_path}")


