"""`nas load PATH [--out DIR]`: rebuild a model without pickle and summarise it. PATH is a model
directory (arch.json + weights.safetensors) or one of its files, or a Deep Compression `.hwdc`
file (`compress.compressed_file`, checked before anything is allocated), which `--out` decodes
into the plain model files every other command reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nas.commands.common import fail_on_user_error
from search_spaces.errors import OptionError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("load")(load)


@fail_on_user_error
def load(
    path: Path = typer.Argument(..., help="Directory with arch.json + weights.safetensors, one of the two files, "
                                          "or a .hwdc file from `nas compress deep-compression`."),
    weights: Optional[Path] = typer.Option(None, help="The weights file, when PATH is an arch.json elsewhere."),
    out: Optional[Path] = typer.Option(None, help="Decode a .hwdc file into this directory (arch.json + "
                                                  "weights.safetensors)."),
) -> None:
    """Rebuild a model (no pickle: never opens .pt/TorchScript) and print its size and input."""
    from nas.rundir.model_files import load_model_files, save
    from predictors.cost import count

    if path.suffix == ".hwdc":
        from compress.compressed_file import read
        from compress.deep_compression import model_from

        if weights is not None:
            raise OptionError("--weights: a .hwdc file holds its own weights")
        decoded = read(path)
        model, spec = model_from(decoded), decoded.arch
        clustered = sum(1 for entry in decoded.header["tensors"] if entry["kind"] == "clustered")
        source = f"{len(decoded.tensors)} tensors ({clustered} weight-shared), checksums verified"
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            save(model, spec, out)
            source += f"; decoded into {out}"
    else:
        if out is not None:
            raise OptionError("--out: only a .hwdc file is decoded; a model directory is already plain files")
        model, metadata = load_model_files(path, weights)
        spec = model.spec
        source = "integrity metadata checked" if metadata.get("arch_hash") else "no integrity metadata"
    cost = count(model)
    console.print(f"[bold]{spec.name or path}[/] (arch hash {spec.content_hash()}, {source})")
    console.print(f"input: 1 x {spec.in_channels} x {spec.resolution} x {spec.resolution}, "
                  f"{spec.num_classes} classes")
    console.print(f"params: {cost.params:,}   MACs: {cost.macs:,}")
    console.print("blocks: " + " ".join(spec.block_strings()), highlight=False)
