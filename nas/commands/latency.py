"""`nas latency fit|predict`: a latency model for a device from a few whole-model measurements."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nas.commands.common import fail_on_user_error
from search_spaces.errors import InputFileError, OptionError

console = Console()
latency_app = typer.Typer(no_args_is_help=True, help="Fit latency models from few measurements; predict with them.")
HWNASBENCH_PREFIX = "hwnasbench:"


def register(app: typer.Typer) -> None:
    app.add_typer(latency_app, name="latency")


def hwnasbench_default() -> Optional[Path]:
    shared = os.environ.get("HWNAS_SHARED_DATA")
    if not shared:
        return None
    from predictors.latency.hwnasbench import DATA_RELATIVE

    return Path(shared) / DATA_RELATIVE


def load_sources(sources: list[str], hwnasbench: Optional[Path]) -> list[tuple[str, object]]:
    """`hwnasbench:DEVICE` (imported from the HW-NAS-Bench file) or a table / model file."""
    from predictors.latency.hwnasbench import import_hwnasbench
    from predictors.latency.predictor import load_latency_predictor

    out = []
    for source in sources:
        if source.startswith(HWNASBENCH_PREFIX):
            path = hwnasbench or hwnasbench_default()
            if path is None:
                raise OptionError(f"--source {source}: give --hwnasbench FILE (help_fbnet_latency.json) or set "
                                  "HWNAS_SHARED_DATA")
            out.append((source, import_hwnasbench(path, source[len(HWNASBENCH_PREFIX):])))
        else:
            out.append((source, load_latency_predictor(source)))
    return out


@latency_app.command("fit")
@fail_on_user_error
def fit(
    space: str = typer.Option(..., help="Search space name (see `nas spaces`)."),
    measurements: Path = typer.Option(..., help="CSV with columns arch,latency_ms (fbnet: 22 op names joined by "
                                      "'-'; other spaces: a spec JSON path relative to the CSV)."),
    out: Path = typer.Option(..., help="Where to write the model (JSON)."),
    source: list[str] = typer.Option([], "--source", help="Prior: hwnasbench:DEVICE or a latency table / model "
                                     "file; repeat for several (equal weight)."),
    hwnasbench: Optional[Path] = typer.Option(None, help="HW-NAS-Bench's help_fbnet_latency.json for hwnasbench: "
                                              "sources (default: $HWNAS_SHARED_DATA/luts/hwnasbench_fbnet/...)."),
    resolution: Optional[int] = typer.Option(None, min=8, help="Input resolution (default: the sources', else 224)."),
    num_classes: Optional[int] = typer.Option(None, min=2, help="Classes (default: the sources', else 1000)."),
    device: Optional[str] = typer.Option(None, help="Name of the measured device, recorded in the model."),
    seed: int = typer.Option(0, help="Seed of the cross-validation folds."),
) -> None:
    """Fit a latency model on measured architectures; its cross-validated error is stored inside."""
    from predictors.latency.fit import fit_latency_model, read_archs
    from search_spaces.spaces import get_space

    if not measurements.is_file():
        raise InputFileError(f"--measurements {measurements} does not exist")
    loaded = load_sources(source, hwnasbench)
    first = loaded[0][1] if loaded else None
    resolution = resolution or (first.resolution if first is not None else None) or 224
    num_classes = num_classes or (first.num_classes if first is not None else None) or 1000
    search_space = get_space(space, resolution=resolution, num_classes=num_classes)
    for name, table in loaded:
        table.check_fits(space=space, resolution=resolution, num_classes=num_classes, source=f"--source {name}")
    rows = read_archs(measurements, search_space, latencies=True)
    metadata = {"device": device or "unnamed device", "measurements_file": measurements.name}
    model = fit_latency_model(search_space, [row.arch for row in rows], [row.latency_ms for row in rows], loaded,
                              metadata=metadata, seed=seed)
    model.save(out)
    cv = model.cross_validation
    console.print(f"{out}: {model.label}")
    console.print(f"  {cv['method']} cross-validation on {cv['n']}: within ±10% {100 * cv['within_10pct']:.0f}%, "
                  f"MAPE {100 * cv['mape']:.1f}%" + (f", Spearman {cv['spearman']:.2f}" if "spearman" in cv else "")
                  + f"; ridge lambda {model.fit['lambda']}")


@latency_app.command("predict")
@fail_on_user_error
def predict(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="A latency model or table file."),
    archs: Path = typer.Option(..., help="CSV with an arch column (as for `fit`; other columns are ignored)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {arch, latency_ms}."),
) -> None:
    """Predicted latency of each architecture of a CSV."""
    from predictors.latency.fit import read_archs
    from predictors.latency.predictor import load_latency_predictor
    from search_spaces.spaces import get_space

    predictor = load_latency_predictor(model_path)
    if not predictor.space:
        raise OptionError(f"{model_path} names no search space; cannot read architectures for it")
    search_space = get_space(predictor.space, resolution=predictor.resolution, num_classes=predictor.num_classes)
    rows = read_archs(archs, search_space, latencies=False)
    results = [{"arch": row.text, "latency_ms": predictor.predict(row.arch)} for row in rows]
    if as_json:
        print(json.dumps(results, indent=1))
    else:
        for row in results:
            print(f"{row['latency_ms']:10.4f} ms  {row['arch']}")
