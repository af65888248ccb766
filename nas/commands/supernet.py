"""`nas supernet train|evaluate|extract`: an elastic (Once-for-All) supernet trained once in
`runs/RUN/supernet/`, the accuracies its sub-networks inherit (BN re-calibrated, cached), and a
sub-network written as ordinary model files.

`train` records its settings in `supernet/run.json`; `--resume` continues from the last finished
epoch with exactly those settings (only `--device` and `--progress` may be given again)."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from nas.commands.common import fail_on_user_error, load_arch
from nas.commands.search import _json_option
from nas.rundir.atomic import write_json_atomic
from nas.rundir.files import RunDirError, read_json_object, run_directory
from search_spaces.errors import OptionError

console = Console()
supernet_app = typer.Typer(no_args_is_help=True, help="Train an elastic (Once-for-All) supernet once; evaluate "
                                                      "its sub-networks with inherited weights.")

SUPERNET_DIR = "supernet"
RUN_FILE = "run.json"
CACHE_FILE = "accuracy_cache.json"
RESUMABLE = ("device", "progress", "resume", "runs_dir", "name")


def register(app: typer.Typer) -> None:
    app.add_typer(supernet_app, name="supernet")


def _load_data(settings: dict[str, Any]):
    from nas.training.data import load_dataset

    return load_dataset(settings["dataset"], settings["resolution"], seed=settings["seed"],
                        limit=settings["train_limit"])


def _fractions(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"--phase-fractions={text!r}: expected comma-separated numbers, e.g. 0.4,0.2,0.2,0.2") \
            from None


@supernet_app.command("train")
@fail_on_user_error
def train(
    ctx: typer.Context,
    name: str = typer.Option(..., help="Run name: the supernet goes to RUNS_DIR/NAME/supernet/."),
    space: str = typer.Option("proxyless", help="Search space (covered: proxyless, fbnet, mnasnet)."),
    space_options: Optional[str] = typer.Option(None, help="JSON keyword arguments of the space, e.g. "
                                                           "'{\"width_mult\": 0.5}'."),
    dataset: str = typer.Option("digits", help="cifar10:PATH | digits | synthetic[:N] | imagefolder:PATH | ..."),
    resolution: int = typer.Option(32, min=8, help="Input resolution (of the space and the data)."),
    train_limit: Optional[int] = typer.Option(None, min=1, help="Use at most this many training images."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(64, min=2),
    lr: float = typer.Option(0.05),
    random_subnets: int = typer.Option(2, min=0, help="Random sub-networks per step besides largest and smallest."),
    max_batches_per_epoch: Optional[int] = typer.Option(None, min=1, help="Shorten epochs (smoke runs)."),
    schedule: str = typer.Option("sandwich", help="sandwich (every dimension every step) | progressive "
                                                   "(progressive shrinking: largest, +kernel, +depth, +expansion, "
                                                   "+width where the space has it)."),
    phase_fractions: Optional[str] = typer.Option(None, help="progressive: share of the epochs per phase, e.g. "
                                                             "0.4,0.2,0.2,0.2 (default: equal)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUNS_DIR/NAME/supernet from its last epoch."),
    runs_dir: Path = typer.Option(Path("runs")),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train an elastic supernet (sandwich rule, in-place distillation), checkpointed per epoch."""
    from nas.oneshot.elastic_supernet import ElasticSupernet
    from nas.oneshot.ofa_train import OFATrainConfig, check_schedule, train_supernet
    from search_spaces.spaces import get_space

    directory = run_directory(runs_dir, name)
    checkpoint = directory.path / SUPERNET_DIR
    passed = [p for p in ctx.command.params if ctx.get_parameter_source(p.name).name != "DEFAULT"]
    with directory.writing(new=False):
        if resume:
            refused = [p.opts[0] for p in passed if p.name not in RESUMABLE]
            if refused:
                raise OptionError(f"{', '.join(refused)}: a resumed supernet keeps its settings ({RUN_FILE}); "
                                  "only --device and --progress may be given")
            if not (checkpoint / RUN_FILE).is_file():
                raise RunDirError(f"{checkpoint}: no supernet to resume; start one without --resume")
            settings = read_json_object(checkpoint / RUN_FILE, "supernet run settings")
            settings["config"]["device"] = device
        else:
            if (checkpoint / RUN_FILE).exists():
                raise RunDirError(f"{checkpoint} already holds a supernet; continue it with --resume or choose "
                                  "another --name")
            settings = {"space": space, "space_options": _json_option(space_options, "--space-options"),
                        "dataset": dataset, "resolution": resolution, "train_limit": train_limit, "seed": seed,
                        "config": OFATrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                                                 random_subnets=random_subnets,
                                                 max_batches_per_epoch=max_batches_per_epoch, schedule=schedule,
                                                 phase_fractions=_fractions(phase_fractions)).to_dict()}
        data = _load_data(settings)
        config = OFATrainConfig.from_dict(settings["config"])
        search_space = get_space(settings["space"], resolution=settings["resolution"], num_classes=data.num_classes,
                                 **settings["space_options"])
        import torch

        torch.manual_seed(settings["seed"])
        supernet = ElasticSupernet(search_space)
        check_schedule(supernet, config)  # before run.json: a refused --phase-fractions leaves no run behind
        if not resume:
            write_json_atomic(checkpoint / RUN_FILE, settings)
        result = train_supernet(supernet, data, config, checkpoint, progress=progress)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    last = result["history"][-1]
    console.print(f"supernet of {settings['space']} trained to epoch {result['epoch']} in {checkpoint} "
                  f"({result['wall_s']:.1f}s this call, peak RSS {peak_mb:.0f} MB); val accuracy after BN "
                  f"re-calibration: largest {last['val_accuracy_largest']:.4f}, smallest "
                  f"{last['val_accuracy_smallest']:.4f}")


@supernet_app.command("evaluate")
@fail_on_user_error
def evaluate(
    run: Path = typer.Argument(..., help="The run directory (RUNS_DIR/NAME) holding supernet/."),
    arch: Optional[list[str]] = typer.Option(None, help="A spec JSON file of a sub-network (repeatable)."),
    samples: int = typer.Option(0, min=0, help="Also evaluate this many sub-networks drawn uniformly."),
    calibration_images: int = typer.Option(512, min=1, help="Training images for BN re-calibration."),
    seed: int = typer.Option(0, help="Seed of the drawn sub-networks."),
    device: str = typer.Option("auto"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Inherited val accuracy of sub-networks (BN re-calibrated; cached in supernet/accuracy_cache.json)."""
    import numpy as np

    from nas.oneshot.ofa_eval import subnet_accuracy
    from nas.oneshot.ofa_train import load_supernet

    checkpoint = Path(run) / SUPERNET_DIR
    if not (checkpoint / RUN_FILE).is_file():
        raise RunDirError(f"{run}: no {SUPERNET_DIR}/{RUN_FILE}; train one with `nas supernet train --name ...`")
    if not arch and samples == 0:
        raise OptionError("--arch or --samples: say which sub-networks to evaluate")
    settings = read_json_object(checkpoint / RUN_FILE, "supernet run settings")
    supernet, state = load_supernet(checkpoint)
    data = _load_data(settings)
    archs = []
    for argument in arch or []:
        spec = load_arch(argument)
        supernet.covers(spec)
        archs.append(spec)
    rng = np.random.default_rng(seed)
    archs += [supernet.sample(rng) for _ in range(samples)]
    rows = []
    for spec in archs:
        accuracy = subnet_accuracy(supernet, spec, data, calibration_images=calibration_images,
                                   cache=checkpoint / CACHE_FILE, device=device)
        rows.append({"arch_hash": spec.content_hash(), "blocks": len(spec.blocks), "accuracy": accuracy,
                     "epoch": int(state["epoch"]), "arch": spec.to_dict()})
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title=f"inherited accuracy, supernet epoch {state['epoch']}")
    for column in ("arch hash", "blocks", "val accuracy"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["arch_hash"][:12], str(row["blocks"]), f"{row['accuracy']:.4f}")
    console.print(table)


@supernet_app.command("extract")
@fail_on_user_error
def extract(
    run: Path = typer.Argument(..., help="The run directory (RUNS_DIR/NAME) holding supernet/."),
    arch: str = typer.Option(..., help="Spec JSON file of the sub-network (it must be in the supernet's space)."),
    out: Path = typer.Option(..., help="Directory for arch.json + weights.safetensors."),
    calibration_images: int = typer.Option(512, min=1, help="Training images for BN re-calibration."),
    device: str = typer.Option("auto"),
) -> None:
    """Write a sub-network with inherited weights (BN re-calibrated) as plain model files."""
    # arch.json + weights.safetensors: it trains, exports and measures like any other model
    from nas.oneshot.ofa_eval import calibrated_model
    from nas.oneshot.ofa_train import load_supernet
    from nas.rundir.model_files import save
    from nas.training.train import evaluate as accuracy_of

    checkpoint = Path(run) / SUPERNET_DIR
    if not (checkpoint / RUN_FILE).is_file():
        raise RunDirError(f"{run}: no {SUPERNET_DIR}/{RUN_FILE}; train one with `nas supernet train --name ...`")
    settings = read_json_object(checkpoint / RUN_FILE, "supernet run settings")
    supernet, state = load_supernet(checkpoint)
    spec = load_arch(arch)
    supernet.covers(spec)
    data = _load_data(settings)
    model = calibrated_model(supernet, spec, data, calibration_images=calibration_images, device=device).cpu()
    accuracy = accuracy_of(model, data.val, device=device)
    out.mkdir(parents=True, exist_ok=True)
    save(model, spec, out)
    console.print(f"{out}: {len(spec.blocks)} blocks from the epoch-{state['epoch']} supernet, val accuracy "
                  f"{accuracy:.4f} (inherited, BN re-calibrated on {calibration_images} training images)")
