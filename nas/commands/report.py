"""`nas report RUN`: figures and an index.html of a search run (works while it still runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nas.commands.common import fail_on_user_error


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)


@fail_on_user_error
def report_command(
    run: Path = typer.Argument(..., help="Run directory, e.g. runs/NAME."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default RUN/report/)."),
) -> None:
    """Accuracy vs latency with the Pareto front, progress, per-layer latency; one index.html."""
    from nas.artifacts.report import write_report

    files = write_report(run, out)
    console = Console()
    for figure in files.figures:
        console.print(f"  {figure}")
    console.print(f"open {files.index}")
