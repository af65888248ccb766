"""`nas supernet specialize RUN --lut TABLE --latency-budget X --out DIR`: the sub-network of a
trained supernet for one device and budget, in seconds once the run has an accuracy predictor.

The first call on a supernet epoch evaluates `--samples` sub-networks (inherited weights, BN
re-calibrated, cached with `nas supernet evaluate`'s) and fits the predictor into
`RUN/supernet/predictor.*`; every call then runs the evolution over it under the latency model
`--lut` opens (a table, a fitted model, `hwnasbench:<device>`) and writes DIR/arch.json,
DIR/weights.safetensors (inherited, BN re-calibrated; after `--finetune-epochs`, fine-tuned with
distillation from the supernet's largest network) and DIR/metrics.json. `nas load DIR` reads it."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import typer
from rich.console import Console

from nas.commands.common import fail_on_user_error
from nas.commands.search import parse_latency_ms
from nas.commands.supernet import RUN_FILE, SUPERNET_DIR, _load_data, supernet_app
from nas.rundir.files import RunDirError, read_json_object

console = Console()


@supernet_app.command("specialize")
@fail_on_user_error
def specialize(
    run: Path = typer.Argument(..., help="The run directory (RUNS_DIR/NAME) holding supernet/."),
    lut: str = typer.Option(..., help="Latency model: a table or fitted-model JSON, or hwnasbench:<device>."),
    latency_budget: str = typer.Option(..., help="Latency budget: 6ms, 0.5ms, 500us; a bare number: ms."),
    out: Path = typer.Option(..., help="New or empty directory for arch.json, weights.safetensors, metrics.json."),
    samples: int = typer.Option(200, min=2, help="Sub-networks evaluated to fit the predictor (first call per "
                                                 "supernet epoch; more than the saved predictor had refits it)."),
    predictor_hidden: int = typer.Option(400, min=1, help="Units per hidden layer of the predictor (OFA: 400)."),
    predictor_epochs: int = typer.Option(100, min=1, help="Full-batch Adam steps of each predictor fit."),
    finetune_epochs: int = typer.Option(0, min=0, help="Distilled fine-tune epochs from the supernet's largest net."),
    calibration_images: int = typer.Option(512, min=1, help="Training images for BN re-calibration."),
    population: int = typer.Option(100, min=2, help="Evolution population (OFA: 100)."),
    generations: int = typer.Option(50, min=0, help="Evolution generations (OFA: 500 on ImageNet)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
) -> None:
    """Pick the sub-network for a latency budget (predictor + evolution) and write it as a model."""
    from nas.oneshot.ofa_run import check_out_dir, inherited_model, run_predictor, specialize_supernet, \
        write_specialized
    from nas.oneshot.ofa_predictor import PredictorConfig
    from nas.oneshot.ofa_specialize import EvolutionSettings
    from nas.oneshot.ofa_train import load_supernet
    from predictors.latency import open_latency_model

    budget_ms = parse_latency_ms(latency_budget)
    checkpoint = Path(run) / SUPERNET_DIR
    if not (checkpoint / RUN_FILE).is_file():
        raise RunDirError(f"{run}: no {SUPERNET_DIR}/{RUN_FILE}; train one with `nas supernet train --name ...`")
    check_out_dir(out, checkpoint)
    settings = read_json_object(checkpoint / RUN_FILE, "supernet run settings")
    latency = open_latency_model(lut)
    supernet, state = load_supernet(checkpoint)
    space = supernet.space
    latency.check_fits(space=space.name, resolution=space.resolution, num_classes=space.num_classes, source=lut)
    data = _load_data(settings)
    predictor, cost = run_predictor(supernet, data, checkpoint, samples=samples, seed=seed,
                                    config=PredictorConfig(hidden=predictor_hidden, epochs=predictor_epochs),
                                    calibration_images=calibration_images, device=device, progress=True)
    found = specialize_supernet(supernet, predictor, latency, budget_ms,
                                EvolutionSettings(population=population, generations=generations), seed=seed)
    model, inherited = inherited_model(supernet, found.arch, data, calibration_images=calibration_images,
                                       device=device)
    metrics = {**found.to_dict(), "inherited_accuracy": inherited, "predictor": cost,
               "predictor_rmse": predictor.rmse, "supernet_epoch": int(state["epoch"]), "weights": "inherited"}
    if finetune_epochs:
        from nas.training.recipes import distilled_finetune
        from nas.training.train import TrainConfig

        teacher, _ = inherited_model(supernet, supernet.largest(), data, calibration_images=calibration_images,
                                     device=device)
        started = time.perf_counter()
        student = copy.deepcopy(model)
        report = distilled_finetune(student, teacher, data, TrainConfig(epochs=finetune_epochs, seed=seed,
                                                                        device=device))
        model = student.cpu().eval()
        metrics.update(weights="finetuned", finetune_epochs=finetune_epochs,
                       finetune_seconds=time.perf_counter() - started, finetuned_val_accuracy=report.val_accuracy,
                       finetuned_test_accuracy=report.test_accuracy)
    write_specialized(out, model, found.arch, metrics)
    console.print(f"{out}: predicted {found.predicted_accuracy:.4f} accuracy at {found.latency_ms:.3f} ms "
                  f"(budget {budget_ms:g} ms, {found.latency_label}); inherited accuracy {inherited:.4f}"
                  + (f", after {finetune_epochs} fine-tune epoch(s) {metrics['finetuned_val_accuracy']:.4f}"
                     if finetune_epochs else "")
                  + f"; specialised in {found.seconds:.2f} s"
                  + ("" if cost["reused"] else f" after fitting the predictor on {cost['samples']} sub-networks"),
                  highlight=False)
