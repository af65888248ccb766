"""`nas search` (a latency-constrained architecture search, resumable, local or on Ray) and
`nas demo` (the whole pipeline on digits in about ten minutes on a small CPU)."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, get_args, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from nas.rundir.records import BestMetrics
from nas.commands.common import fail_on_user_error
from nas.rundir.files import run_directory
from nas.search.config import EXECUTION_FIELDS, SETTINGS, SearchConfig, flag_of, refuse_on_resume
from nas.training.train import TrainConfig
from search_spaces.errors import OptionError

console = Console()

_LATENCY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|µs|s)?\s*$")
_TO_MS = {None: 1.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("demo")(demo)


def parse_latency_ms(text: str) -> float:
    """'6ms', '6', '0.5ms', '500us', '0.006s' -> milliseconds."""
    match = _LATENCY.match(str(text))
    if not match:
        raise OptionError(f"--latency-budget={text!r}: expected a number with an optional unit ms, us or s "
                         "(e.g. 6ms, 0.5ms, 500us; a bare number means ms)")
    value = float(match.group(1)) * _TO_MS[match.group(2)]
    if not value > 0:
        raise OptionError(f"--latency-budget={text!r}: must be > 0")
    return value


def ensure_lut(space_name: str, resolution: int, num_classes: int, space_options: dict[str, Any], backend: str,
               threads: int, root: Path, settings: Any = None) -> Path:
    from predictors.latency import LocalMeasurer, ensure_table, lut_path_for
    from search_spaces.spaces import get_space

    path = lut_path_for(space_name, resolution, num_classes, backend, threads, space_options, root)
    space = get_space(space_name, resolution=resolution, num_classes=num_classes, **space_options)
    console.print(f"latency table: {path} ({len(space.candidate_ops())} candidate ops; existing entries are reused)")
    ensure_table(space, LocalMeasurer(backend, threads=threads, settings=settings), path)
    return path


def _json_option(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise OptionError(f"{option}: not valid JSON ({error}); e.g. '{{\"ops\": [\"mbconv\"]}}'") from None
    if not isinstance(value, dict):
        raise OptionError(f"{option}: expected a JSON object of keyword arguments")
    return value


# Settings given as text and parsed here (units, JSON; a table built when none is given)
_PARSED = ("latency_budget_ms", "lut_path", "space_options", "strategy_options")
_TRAIN = [name.partition(".")[2] for name in SETTINGS if name.startswith("train.")]
# Besides the execution settings, what may change on resume: how this process shows and finishes it.
_RESUMABLE = ("resume", "progress", "train_threads", "final_epochs", "repair")


def search(
    ctx: typer.Context,
    name: Optional[str] = typer.Option(None, help="Run name: files go to runs/NAME."),
    final_epochs: int = typer.Option(10, min=0, help="Retrain the best architecture this long at the end "
                                                      "(0: skip the final step)."),
    backend: str = typer.Option("onnxruntime", help="Latency backend for building the table and the final "
                                                    "measurement: torch | onnxruntime | cuda."),
    threads: int = typer.Option(1, min=1, help="Threads of the latency backend."),
    resume: Optional[Path] = typer.Option(None, help="Resume the run in this directory (runs/NAME) as its config.json "
                                                     "says; only execution settings (Ray, workers) may be given."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where runs (and built tables, under luts/) go."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress bar."),
    train_threads: Optional[int] = typer.Option(None, min=1, help="Torch threads for in-process training "
                                                                 "(default: one per CPU other processes leave free)."),
    repair: bool = typer.Option(False, "--repair", help="With --resume, when the run's files disagree: first rebuild "
                                                       "trials.jsonl from what best/ and searcher.json prove (the "
                                                       "files as they were are kept as *.before-repair)."),
    **settings: Any,  # an option per SETTINGS entry, added by `_with_setting_options`
) -> None:
    """Search a space for the most accurate network under a latency budget."""
    # by name: typer bundles its own click, whose ParameterSource is not click's
    passed = [p for p in ctx.command.params if ctx.get_parameter_source(p.name).name != "DEFAULT"]
    if resume is not None:
        refuse_on_resume([p.opts[0] for p in passed if p.name not in (*EXECUTION_FIELDS, *_RESUMABLE)])
        given = {p.name: ctx.params[p.name] for p in passed if p.name in EXECUTION_FIELDS}
        run_and_report(None, resume, resume=True, given=given, final_epochs=final_epochs, progress=progress,
                       train_threads=train_threads, repair=repair)
        return
    if repair:
        raise OptionError("--repair: only with --resume runs/NAME (a new run has nothing to repair)")
    budget, lut = settings.pop("latency_budget"), settings.pop("lut")
    if name is None or budget is None:
        missing = [flag for flag, value in (("--name", name), ("--latency-budget", budget)) if value is None]
        raise OptionError(f"{' and '.join(missing)} required for a new search (or --resume runs/NAME)")
    directory = run_directory(runs_dir, name)
    budget_ms = parse_latency_ms(budget)
    from nas.search.runner import refuse_unused_settings, strategy_class

    refuse_unused_settings(strategy_class(settings["strategy"]), typed=tuple(p.name for p in passed))
    options = _json_option(settings.pop("space_options"), "--space-options")
    strategy_options = _json_option(settings.pop("strategy_options"), "--strategy-options")
    train = TrainConfig(seed=settings["seed"], **{key: settings.pop(key) for key in _TRAIN})
    if lut is None:
        from nas.training.data import load_dataset

        classes = load_dataset(settings["dataset"], settings["resolution"], seed=settings["seed"],
                               limit=settings["train_limit"], tabular=True).num_classes
        lut = ensure_lut(settings["space"], settings["resolution"], classes, options, backend, threads,
                         runs_dir / "luts")
    from predictors.latency import is_named_model

    lut_text = str(lut) if is_named_model(str(lut)) else str(Path(lut).resolve())  # hwnasbench:pixel3 is a name
    config = SearchConfig(latency_budget_ms=budget_ms, lut_path=lut_text, space_options=options,
                          strategy_options=strategy_options, train=train, **settings)
    run_and_report(config, directory.path, final_epochs=final_epochs, progress=progress, train_threads=train_threads)


def _with_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` taking an option per SearchConfig setting, named by its flag: typer reads the
    signature, so --help shows the dataclass's default and help."""
    hints = {prefix + key: hint for prefix, cls in (("", SearchConfig), ("train.", TrainConfig))
             for key, hint in get_type_hints(cls).items()}
    own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    parameters = own[:1]  # ctx; the settings come first in --help
    for name, item in SETTINGS.items():
        hint, default = (str, None) if name in _PARSED else (hints[name], item.default)
        if type(None) in get_args(hint):  # Optional: None is the default, not a value to parse
            hint = get_args(hint)[0]
        option = typer.Option(default, help=item.metadata["help"], min=item.metadata["min"])
        parameters.append(inspect.Parameter(flag_of(name)[2:].replace("-", "_"), own[0].kind,  # as ctx: positional
                                            default=option, annotation=hint))
    command.__signature__ = inspect.signature(command).replace(parameters=parameters + own[1:])  # type: ignore
    return command


search = fail_on_user_error(_with_setting_options(search))


def run_and_report(config: Any, run_dir: Path, *, resume: bool = False, given: dict[str, Any] | None = None,
                   final_epochs: int, progress: bool, demo_info: dict[str, Any] | None = None,
                   train_threads: int | None = None, repair: bool = False) -> BestMetrics | None:
    """Search, then retrain / test / measure the winner, print it and save it under best/.
    `train_threads`: torch threads for training; None: one per CPU other processes leave free
    (measured only when something will be trained: a tabular run trains nothing)."""
    import logging

    import torch

    from nas.rundir.files import RunDirectory
    from nas.search.runner import run_search
    from nas.training.data import is_tabular
    from nas.training.threads import fair_threads

    dataset = (config or SearchConfig.from_dict(RunDirectory(run_dir).read_config())).dataset
    if train_threads or not is_tabular(dataset):
        torch.set_num_threads(train_threads or fair_threads())

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # one line per trial (nas.search.session) is enough next to the progress bar; epochs show with -v
        logging.getLogger("nas.training.train").setLevel(logging.WARNING)
    try:
        summary = run_search(config, run_dir, resume=resume, progress=progress, given=given, repair=repair,
                             on_repair=lambda report: console.print("\n".join(report.lines()), highlight=False))
    except KeyboardInterrupt:
        # every finished trial is on disk: say how to go on instead of ending in a traceback
        console.print(f"[yellow]interrupted; finished trials are kept. Go on with: nas search --resume {run_dir}[/]")
        raise typer.Exit(130) from None
    resumed = f", resumed (replayed {summary.replayed})" if summary.resumed else ""
    console.print(f"{summary.run_dir}: {summary.trials} trials ({summary.ok} ok, {summary.failed} failed, "
                  f"{summary.infeasible} over budget) in {summary.elapsed_s:.0f} s{resumed}")
    if summary.best is None:
        console.print("[yellow]no trial met the latency budget; nothing to retrain[/]")
        return None
    _warn_if_indistinguishable(summary.run_dir)
    metrics = _finalize(summary.run_dir, final_epochs, progress)
    if demo_info:
        metrics = RunDirectory(summary.run_dir).update_best_metrics(extra={**metrics.extra, "demo": demo_info})
    _print_best(summary.run_dir, metrics)
    return metrics


def _warn_if_indistinguishable(run_dir: Path) -> None:
    """Say so when every trained trial scored at chance: the search then ranked noise (too few
    epochs or images for these networks), and its "best" means nothing."""
    from nas.rundir.files import RunDirectory

    directory = RunDirectory(run_dir)
    accuracies = [r.result.accuracy for r in directory.read_trials()
                  if r.result.status == "ok" and r.result.accuracy is not None]
    if len(accuracies) < 2:
        return
    chance = 1.0 / directory.read_best_arch().num_classes
    if max(accuracies) <= 1.5 * chance:
        console.print(f"[yellow]every trial scored near chance (best val accuracy {max(accuracies):.3f}, chance "
                      f"{chance:.3f}): the search could not tell the candidates apart. Train trials longer "
                      "(--epochs) or on more images before trusting its choice.[/]")


def _finalize(run_dir: Path, final_epochs: int, progress: bool) -> BestMetrics:
    from nas.rundir.files import RunDirectory
    from nas.search.runner import finalize_best
    from nas.training.data import is_tabular
    from predictors.latency import LocalMeasurer, open_latency_model

    directory = RunDirectory(run_dir)
    if final_epochs == 0:
        return directory.read_best_metrics(required=True)
    config = SearchConfig.from_dict(directory.read_config())
    if is_tabular(config.dataset):
        console.print(f"final retraining skipped: {config.dataset} is a table of trained results, not images "
                      "(the best trial's accuracy is the table's own, after its full schedule)")
        return directory.read_best_metrics(required=True)
    table = open_latency_model(config.lut_path)
    backend, threads = table.metadata.get("backend", "onnxruntime"), int(table.metadata.get("threads", 1))
    from predictors.latency.provenance import measured_elsewhere

    try:
        measurer = LocalMeasurer(str(backend), threads=threads)
    except (KeyError, ValueError) as error:  # a table measured elsewhere (a device agent, an import)
        console.print(f"[yellow]cannot measure on backend {backend!r} here ({error}); prediction only[/]")
        measurer = None
    if measurer is not None and (reason := measured_elsewhere(table.metadata, measurer.metadata())):
        # a local time next to another device's prediction would read as that device's latency
        console.print(f"[yellow]no end-to-end measurement: {reason}; the table's prediction stands alone[/]")
        measurer = None
    console.print(f"retraining the best architecture for {final_epochs} epochs, then measuring it on "
                  f"{backend} x{threads} ...")
    return finalize_best(run_dir, epochs=final_epochs, measurer=measurer, progress=progress)


def _print_best(run_dir: Path, metrics: BestMetrics) -> None:
    from nas.rundir.files import RunDirectory

    arch = RunDirectory(run_dir).read_best_arch()
    console.print(f"[bold]best architecture[/] (trial {metrics.trial_id}, {run_dir / 'best'}):")
    console.print(f"  stem {arch.stem.out_channels}ch s{arch.stem.stride} -> " + " -> ".join(arch.block_strings())
                  + f" -> head {arch.head.conv_channels or arch.final_channels}ch, {arch.num_classes} classes "
                  f"@ {arch.resolution}px", highlight=False)
    table = Table(show_header=False)

    def row(label: str, value: Any, fmt: str = "{}") -> None:
        table.add_row(label, "-" if value is None else fmt.format(value))

    from nas.training.data import is_tabular

    dataset = SearchConfig.from_dict(RunDirectory(run_dir).read_config()).dataset
    # a tabular trial's accuracy is the table's observed column (NB201: 200-epoch test accuracy)
    row(f"accuracy (search, {dataset} table)" if is_tabular(dataset) else "val accuracy (search)",
        metrics.val_accuracy, "{:.4f}")
    row("val accuracy (final)", metrics.final_val_accuracy, "{:.4f}")
    row("test accuracy (final)", metrics.test_accuracy, "{:.4f}")
    row("params", metrics.params, "{:,}")
    row("MACs", metrics.macs, "{:,}")
    row("latency budget", metrics.latency_budget_ms, "{:.3f} ms")
    predicted = metrics.latency_ms if metrics.predicted_latency_ms is None else metrics.predicted_latency_ms
    measured = metrics.measured_latency_ms
    row("latency predicted (table)", predicted, "{:.3f} ms")
    row("latency measured (end to end)", measured, "{:.3f} ms")
    if predicted and measured:
        row("prediction error", 100 * (predicted - measured) / measured, "{:+.1f}%")
    budget, other = metrics.latency_budget_ms, metrics.measured_other_load_cores
    if measured and budget and measured > budget:
        row("over budget", f"[red]by {100 * (measured / budget - 1):.1f}% measured[/]")
    if other is not None:
        row("other load while measuring", f"{other:.2f} cores" + (" [yellow](not quiet)[/]" if other >= 0.5 else ""))
    console.print(table)
    if other is not None and other >= 0.5:
        console.print(f"[yellow]the end-to-end latency was measured while other processes used {other:.1f} "
                      "core(s): it is likely inflated. Re-measure on a quiet machine: "
                      f"nas export {run_dir} --format json[/]")


# The demo's settings, chosen by timing `nas demo` end to end on the 2-core x86 VM this was built
# on (shared with other jobs, load 3-5): 9.2 min wall, 6.7 min CPU (table + calibration 8 s, 40
# trials 463 s at 6-18 s each, final 10 epochs 78 s). A restricted MnasNet space (171 table
# entries, 4.35e9 networks) at 16 px with half width keeps trials short; 3 epochs on 800 images
# are the fewest that separate architectures (after 2 most score near chance).
DEMO_SPACE = "mnasnet"
DEMO_SPACE_OPTIONS: dict[str, Any] = {
    "width_mult": 0.5, "ops": ["mbconv"], "kernels": [3, 5, 7], "expand_ratios": [3, 6],
    "se_ratios": [0.0], "width_multipliers": [0.75, 1.0],
}
DEMO_RESOLUTION = 16
DEMO_TRIALS = 40
DEMO_EPOCHS = 3
DEMO_BATCH_SIZE = 32
DEMO_TRAIN_LIMIT = 800
DEMO_FINAL_EPOCHS = 10
DEMO_BUDGET_SAMPLES = 500
DEMO_TRAIN_THREADS = 1


@fail_on_user_error
def demo(
    name: str = typer.Option("demo", help="Run name (runs/NAME is replaced)."),
    trials: int = typer.Option(DEMO_TRIALS, min=1, help="Search trials."),
    epochs: int = typer.Option(DEMO_EPOCHS, min=1, help="Epochs per trial."),
    final_epochs: int = typer.Option(DEMO_FINAL_EPOCHS, min=0, help="Epochs of the final retraining."),
    backend: str = typer.Option("onnxruntime", help="Latency backend."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where the run and the table go."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """A complete search on digits under a latency budget on this CPU, in about ten minutes."""
    import time

    import torch

    from nas.rundir.files import write_json_atomic
    from predictors.latency import load_latency_predictor
    from search_spaces.spaces import get_space

    directory = run_directory(runs_dir, name)
    directory.replace_demo_run()  # the demo always starts afresh (the latency table is reused)
    started = time.perf_counter()
    # One training thread: on a 2-core VM shared with another busy process, two OpenMP threads made
    # some trials 10-60x slower (threads spinning on each other); one thread never stalls.
    torch.set_num_threads(DEMO_TRAIN_THREADS)
    classes = 10  # digits
    lut = ensure_lut(DEMO_SPACE, DEMO_RESOLUTION, classes, DEMO_SPACE_OPTIONS, backend, 1, runs_dir / "luts")
    table = load_latency_predictor(lut)
    space = get_space(DEMO_SPACE, resolution=DEMO_RESOLUTION, num_classes=classes, **DEMO_SPACE_OPTIONS)
    lut_s = time.perf_counter() - started
    budget = round(table.quantile(space, 0.5, DEMO_BUDGET_SAMPLES, seed=0), 4)
    console.print(f"{space.name} ({', '.join(f'{k}={v}' for k, v in DEMO_SPACE_OPTIONS.items())}): "
                  f"{space.size():.2e} networks; budget = median predicted latency of {DEMO_BUDGET_SAMPLES} "
                  f"random ones = {budget:.3f} ms")
    config = SearchConfig(
        space=DEMO_SPACE, latency_budget_ms=budget, lut_path=str(lut.resolve()), dataset="digits",
        resolution=DEMO_RESOLUTION, space_options=DEMO_SPACE_OPTIONS, strategy=SearchConfig.strategy, seed=0,
        trials=trials, train=TrainConfig(epochs=epochs, batch_size=DEMO_BATCH_SIZE, seed=0),
        train_limit=DEMO_TRAIN_LIMIT,
    )
    info = {"lut": str(lut), "lut_build_s": round(lut_s, 1), "budget_rule": f"median of {DEMO_BUDGET_SAMPLES}",
            "threads": torch.get_num_threads()}
    metrics = run_and_report(config, directory.path, final_epochs=final_epochs, progress=progress, demo_info=info,
                             train_threads=DEMO_TRAIN_THREADS)
    wall = time.perf_counter() - started
    write_json_atomic(directory.path / "demo.json", {**info, "wall_time_s": round(wall, 1),
                                                     "best": metrics and metrics.to_json()})
    console.print(f"demo finished in {wall / 60:.1f} min (table {lut_s:.0f} s); results in {directory.path}")
