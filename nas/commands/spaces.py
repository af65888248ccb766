"""`nas spaces` (list the search spaces) and `nas spaces sample NAME` (write sampled specs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import fail_on_user_error

console = Console()
spaces_app = typer.Typer(help="List the search spaces; sample architectures from one.")


def register(app: typer.Typer) -> None:
    app.add_typer(spaces_app, name="spaces")


@spaces_app.callback(invoke_without_command=True)
@fail_on_user_error
def list_spaces(
    ctx: typer.Context,
    resolution: int = typer.Option(224, min=8, help="Input resolution the spaces are built for."),
    num_classes: int = typer.Option(1000, min=2, help="Classes of the head."),
) -> None:
    """Each registered space: decisions, exact size, log10 size, candidate ops (latency-table entries)."""
    if ctx.invoked_subcommand is not None:
        return
    from search_spaces.spaces import SPACES, get_space

    table = Table(title=f"search spaces at {resolution} px, {num_classes} classes",
                  caption="networks: exact count of distinct networks; ops: candidate ops (latency-table entries)")
    for column in ("space", "decisions", "networks", "log10", "ops", "px"):
        table.add_column(column, justify="left" if column == "space" else "right", no_wrap=True)
    for name in SPACES.names():
        space = get_space(name, resolution=resolution, num_classes=num_classes)
        table.add_row(name, str(len(space.decisions)), str(space.size()), f"{space.log10_size():.2f}",
                      str(len(space.candidate_ops())), str(space.resolution))
    console.print(table)


@spaces_app.command("sample")
@fail_on_user_error
def sample(
    name: str = typer.Argument(..., help="Search space name (see `nas spaces`)."),
    n: int = typer.Option(5, "--n", min=1, help="How many architectures."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same files."),
    out: Path = typer.Option(..., help="Directory for the spec files."),
    resolution: int = typer.Option(224, min=8, help="Input resolution."),
    num_classes: int = typer.Option(1000, min=2, help="Classes of the head."),
) -> None:
    """Write N sampled architectures as `OUT/<name>_<i>_<hash>.json` and print their blocks."""
    from search_spaces.spaces import get_space

    space = get_space(name, resolution=resolution, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        arch = space.sample(rng).replace(name=f"{name}_{index}")
        path = out / f"{name}_{index}_{arch.content_hash()}.json"
        path.write_text(arch.to_json() + "\n")
        console.print(f"[bold]{path}[/]", highlight=False)
        console.print("  " + " ".join(arch.block_strings()), highlight=False, soft_wrap=True)
