"""`nas proxies`: zero-cost proxy scores (`predictors.proxies`) of the architectures listed in a
file, on one seeded mini-batch of a dataset, each proxy timed.

    nas proxies --space nb201 --archs FILE --proxies synflow,nwot --dataset cifar10:PATH --json

FILE holds one architecture a line (blank lines and `#` comments skipped): an arch string for a
space that has them (nb201: `|nor_conv_3x3~0|+|...|`), else a spec JSON file (a path, relative
to the current directory or to FILE's folder) or `zoo:NAME`, which must belong to `--space`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import fail_on_user_error, load_arch
from search_spaces.errors import DatasetError, InputFileError, OptionError, UserError
from search_spaces.spec import ArchSpec, SpecError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("proxies")(proxies_command)


def read_archs(path: Path, space_name: str, resolution: int = 32, num_classes: int = 10) -> list[tuple[str, ArchSpec]]:
    """(line as written, spec) for each architecture line of `path`; a line that does not read as
    an architecture of the space is a `SpecError` naming the file and line number. Arch strings
    are built at `resolution` / `num_classes`; a spec file carries its own."""
    from search_spaces.spaces import get_space

    if not path.is_file():
        raise InputFileError(f"--archs {str(path)!r} is not a file (expected one architecture a line)")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise InputFileError(f"--archs {str(path)!r} is not a text file ({error})") from None
    space = get_space(space_name, resolution=resolution, num_classes=num_classes)
    archs = []
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if hasattr(space, "from_arch_string"):
                spec = space.from_arch_string(text)
            else:
                candidate = path.parent / text
                spec = load_arch(str(candidate) if not Path(text).exists() and candidate.exists() else text)
                member = get_space(space_name, resolution=spec.resolution, num_classes=spec.num_classes)
                member.encode(spec)  # raises SpecError when the spec is not in the space
        except UserError as error:
            raise SpecError(f"{path}:{number}: not an architecture of space {space_name!r}: {error}") from None
        archs.append((text, spec))
    if not archs:
        raise InputFileError(f"--archs {str(path)!r} lists no architecture")
    return archs


def dataset_batch(dataset: str, resolution: int, *, size: int, seed: int):
    """`size` training images of `dataset` (any `nas.training.data` form, normalised by its train
    split, resized to `resolution`) drawn by `seed`: the mini-batch the proxies see."""
    from nas.training.data import load_dataset
    from predictors.proxies import sample_batch

    splits = load_dataset(dataset, resolution, seed=seed)
    images, labels = splits.train.tensors
    return sample_batch(images, labels, splits.num_classes, size=size, seed=seed)


def score_archs(archs: list[tuple[str, ArchSpec]], names: list[str], dataset: str | None, *, seed: int,
                batch_size: int, init: str) -> list[dict[str, Any]]:
    from predictors.proxies import get_proxy, score_model, shape_batch
    from search_spaces.build import build_model

    needing = [name for name in names if get_proxy(name).needs_data]
    if needing and not dataset:
        raise OptionError(f"proxies {', '.join(needing)} read images: give --dataset (e.g. cifar10:PATH)")
    batches: dict[int, Any] = {}
    rows = []
    for text, spec in archs:
        if spec.resolution not in batches:
            batches[spec.resolution] = (dataset_batch(dataset, spec.resolution, size=batch_size, seed=seed) if dataset
                                        else shape_batch(spec.in_channels, spec.resolution, spec.num_classes, batch_size))
        batch = batches[spec.resolution]
        if batch.num_classes > spec.num_classes:
            raise DatasetError(f"dataset {dataset!r} has {batch.num_classes} classes; arch {text!r} classifies "
                               f"{spec.num_classes}")
        scores = score_model(build_model(spec), names, batch, seed=seed, init=init)
        row: dict[str, Any] = {"arch": text}
        row.update({name: score.value if math.isfinite(score.value) else None for name, score in scores.items()})
        row["seconds"] = {name: round(score.seconds, 4) for name, score in scores.items()}
        rows.append(row)
    return rows


@fail_on_user_error
def proxies_command(
    archs: Path = typer.Option(..., "--archs", help="File with one architecture a line (arch string, or a spec JSON path)."),
    space: str = typer.Option("nb201", help="Search space the architectures belong to."),
    proxies: str = typer.Option("synflow,nwot", help="Comma-separated proxies (see --list)."),
    dataset: str = typer.Option(None, help="Mini-batch source, e.g. cifar10:PATH (not needed by data-free proxies)."),
    seed: int = typer.Option(0, help="Seed of the init and of the mini-batch."),
    batch_size: int = typer.Option(64, help="Images in the mini-batch (64: the published NB201 scores' protocol)."),
    init: str = typer.Option("torch", help="torch: PyTorch's default layer init (as the published scores); "
                             "as-built: build_model's own init."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list: arch, one key per proxy, seconds per proxy."),
    resolution: int = typer.Option(32, help="Input size of networks given as arch strings (nb201: 32, or 16 for ImageNet16)."),
    num_classes: int = typer.Option(10, help="Classes of networks given as arch strings."),
    threads: int = typer.Option(1, help="torch CPU threads."),
) -> None:
    """Zero-cost proxy scores of architectures, each on a fresh seeded copy and timed."""
    import torch

    from predictors.proxies import parse_proxy_names

    names = parse_proxy_names(proxies)
    if batch_size < 2:
        raise OptionError(f"--batch-size {batch_size} must be at least 2")
    if threads < 1:
        raise OptionError(f"--threads {threads} must be at least 1")
    torch.set_num_threads(threads)
    rows = score_archs(read_archs(archs, space, resolution, num_classes), names, dataset, seed=seed, batch_size=batch_size, init=init)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"zero-cost proxies ({space}, seed {seed}, init {init})")
    table.add_column("arch", overflow="fold")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("seconds", justify="right")
    for row in rows:
        cells = ["—" if row[name] is None else f"{row[name]:.6g}" for name in names]
        table.add_row(row["arch"], *cells, f"{sum(row['seconds'].values()):.2f}")
    console.print(table)
