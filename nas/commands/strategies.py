"""`nas strategies`: the registered search strategies, their kind and their options."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import fail_on_user_error

console = Console()


def register(app: typer.Typer) -> None:
    app.command("strategies")(list_strategies)


@fail_on_user_error
def list_strategies(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (name, kind, summary, options) instead of a table."),
) -> None:
    """Each strategy `nas search --strategy` takes, and the `--strategy-options` it accepts."""
    from nas.search.runner import strategy_descriptions

    described = strategy_descriptions()
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    table = Table(title="search strategies", caption="ask-tell: propose, learn from trained trials; "
                  "one-shot: train a supernet once, derive one network")
    for column in ("strategy", "kind", "options (default)", "what it is"):
        table.add_column(column, overflow="fold")
    for entry in described:
        options = ", ".join(f"{name}={value!r}" for name, value in entry["options"].items()) or "-"
        table.add_row(entry["name"], entry["kind"], options, entry["summary"])
    console.print(table)
