"""`nas load FILE.hwdc --out DIR`: decode a Deep Compression file (`compress.compressed_file`) into
arch.json + weights.safetensors, the plain model files every other command reads."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from nas.commands.common import fail_on_user_error

console = Console()


def register(app: typer.Typer) -> None:
    app.command("load")(load)


@fail_on_user_error
def load(
    file: Path = typer.Argument(..., help="A .hwdc file (from `nas compress deep-compression`)."),
    out: Path = typer.Option(..., help="Directory for arch.json + weights.safetensors."),
) -> None:
    """Decode a .hwdc file (checked: magic, version, lengths, checksums) into a model directory."""
    from compress.compressed_file import read
    from compress.deep_compression import model_from
    from nas.rundir.model_files import save

    decoded = read(file)
    out.mkdir(parents=True, exist_ok=True)
    save(model_from(decoded), decoded.arch, out)
    clustered = sum(1 for entry in decoded.header["tensors"] if entry["kind"] == "clustered")
    console.print(f"{out}: {decoded.arch.name or 'model'} with {len(decoded.tensors)} tensors "
                  f"({clustered} weight-shared) from {file}")
