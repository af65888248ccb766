"""The `nas` command line: a thin layer over the library. Each command group lives in
`nas/commands/<group>.py` and adds itself to the app with `register(app)`."""

from __future__ import annotations

import logging
import os

import typer

from nas.commands import COMMAND_MODULES

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Hardware-aware neural architecture search and compression.",
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    # Keep ONNX Runtime / torch from oversubscribing a small machine unless the user asked.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    app()
