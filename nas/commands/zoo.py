"""`nas zoo`: the published architectures with our parameter and MAC counts beside the papers'
(and torchvision's parameter count where it ships the model)."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import fail_on_user_error


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo_command)


def _percent(value: int, reference: int) -> float:
    return round(100.0 * (value - reference) / reference, 2)


def zoo_rows(names: list[str] | None = None, traced: bool = False) -> list[dict[str, Any]]:
    """One row per zoo model at 224x224: our counts, the published ones, the differences in %.
    MACs come from the closed form (`macs_of_spec`), or with `traced` from fvcore's count of a
    forward pass (seconds per model); the tests hold the two equal on every zoo model."""
    from search_spaces import zoo

    specs = {name: zoo.get(name) for name in names or zoo.names()}  # an unknown name fails before the imports
    import torchvision

    from predictors import count, macs_of_spec
    from search_spaces import build_model

    rows = []
    for name, spec in specs.items():
        if traced:
            cost = count(spec)
            params, macs = cost.params, cost.macs
        else:
            params = sum(parameter.numel() for parameter in build_model(spec).parameters())
            macs = macs_of_spec(spec)
        published = zoo.PUBLISHED[name]
        torchvision_name = zoo.TORCHVISION_NAMES.get(name)
        torchvision_params = None
        if torchvision_name:
            # weights=None: the architecture only, nothing is downloaded
            reference = torchvision.models.get_model(torchvision_name, weights=None)
            torchvision_params = sum(parameter.numel() for parameter in reference.parameters())
        rows.append(
            {
                "name": name,
                "params": params,
                "macs": macs,
                "published_params": published.params,
                "published_macs": published.macs,
                "params_diff_percent": _percent(params, published.params),
                "macs_diff_percent": _percent(macs, published.macs),
                "torchvision": torchvision_name,
                "torchvision_params": torchvision_params,
                "source": published.source,
            }
        )
    return rows


@fail_on_user_error
def zoo_command(
    names: Optional[list[str]] = typer.Argument(None, metavar="[NAME]...", help="Models to show (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
    traced: bool = typer.Option(False, "--traced", help="Count MACs with fvcore on a forward pass (slower)."),
) -> None:
    """Published architectures: params and MACs at 224x224 against the papers and torchvision."""
    rows = zoo_rows(names, traced=traced)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Reference zoo at 224x224 (MACs: conv + linear multiply-adds)")
    for column in ("model", "params (M)", "paper (M)", "diff", "MACs (M)", "paper (M)", "diff", "torchvision params"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        torchvision_params = row["torchvision_params"]
        if torchvision_params is None:
            match = "-"
        else:
            match = f"{torchvision_params:,}" + (" (=)" if torchvision_params == row["params"] else " (differs)")
        table.add_row(
            row["name"],
            f"{row['params'] / 1e6:.3f}",
            f"{row['published_params'] / 1e6:.2f}",
            f"{row['params_diff_percent']:+.2f}%",
            f"{row['macs'] / 1e6:.1f}",
            f"{row['published_macs'] / 1e6:.0f}",
            f"{row['macs_diff_percent']:+.2f}%",
            match,
        )
    console = Console()  # made per call, so it reads the terminal width (COLUMNS) of this run
    console.print(table)
    console.print("Sources: " + "; ".join(f"{row['name']}: {row['source']}" for row in rows), highlight=False)
