"""`nas compress lowrank SOURCE`: factorize a trained model's convs and linears (SVD or Tucker-2),
then fine-tune it with distillation from the original.

Ranks come from exactly one of `--energy E` (per layer the smallest rank keeping E of the squared
singular values), `--latency-budget 1.2ms --lut TABLE` (greedy over the table's per-layer
latencies; entries the table lacks are measured here on ONNX Runtime, 1 thread) or `--ranks FILE`
(a "lowrank" policy JSON). Writes arch.json, weights.safetensors (an ordinary model directory:
`nas.rundir.model_files.load` reads it), policy.json and metrics.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from nas.commands.common import fail_on_user_error
from nas.commands.compress import _data, _output_dir, _write, compress_app, console, read_source
from search_spaces.errors import OptionError


def parse_ms(text: str) -> float:
    """"1.2ms" or "1.2" -> 1.2."""
    raw = text.strip().removesuffix("ms").strip()
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise OptionError(f"--latency-budget={text!r} must be a positive number of ms (e.g. 1.2ms)")
    return value


def _choose(model: Any, energy: float | None, budget: str | None, lut: Path | None, ranks: Path | None,
            method: str) -> tuple[Any, dict[str, Any]]:
    from compress.lowrank_policy import RankPolicy, energy_policy, latency_policy

    if (energy is not None) + (budget is not None) + (ranks is not None) != 1:
        raise OptionError("give exactly one of --energy, --latency-budget (with --lut) or --ranks")
    if energy is not None:
        if not 0 < energy <= 1:
            raise OptionError(f"--energy={energy!r} must be in (0, 1]")
        policy, skipped = energy_policy(model, energy, method)
        return policy, {"skipped": skipped}
    if ranks is not None:
        return RankPolicy.load(ranks, model), {}
    if lut is None:
        raise OptionError("--latency-budget needs --lut TABLE (a latency table of this network's layers)")
    from predictors.latency import LatencyTable, LocalMeasurer

    table = LatencyTable.load(lut)
    measurer = LocalMeasurer("onnxruntime", threads=1)

    def layer_ms(layer: Any) -> float:
        if layer.signature not in table:
            table.add(layer.signature, measurer.measure_layers([layer])[0])
        return table.layer_ms(layer)

    return latency_policy(model, parse_ms(budget), layer_ms, method, intercept_ms=table.intercept_ms)


@compress_app.command("lowrank")
@fail_on_user_error
def lowrank(
    source: str = typer.Argument(..., help="A run (its best/), or a model directory."),
    energy: Optional[float] = typer.Option(None, help="Keep this share of each layer's squared singular values."),
    latency_budget: Optional[str] = typer.Option(None, help="e.g. 1.2ms: greedy ranks under --lut's prediction."),
    lut: Optional[Path] = typer.Option(None, help="Latency table for --latency-budget."),
    ranks: Optional[Path] = typer.Option(None, help="A lowrank policy JSON (layer -> a rank (SVD) or a pair "
                                                    "r_in, r_out (Tucker-2)); --method does not apply."),
    method: str = typer.Option("svd", help="svd | tucker2 (Tucker-2 for k x k convs, SVD for 1x1 and linears)."),
    epochs: int = typer.Option(3, min=0, help="Fine-tune epochs with distillation from the original."),
    dataset: Optional[str] = typer.Option(None, help="Default: the run's dataset."),
    weights: Optional[Path] = typer.Option(None),
    out: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
    measure: bool = typer.Option(True, help="Measure latency before/after on ONNX Runtime (1 thread)."),
) -> None:
    """Low-rank factorization (SVD / Tucker-2) into an ordinary smaller spec, then distilled fine-tune."""
    from compress.lowrank import factorize
    from nas.commands.common import make_measurer
    from nas.rundir.model_files import save
    from nas.training import TrainConfig, distilled_finetune, evaluate
    from predictors.cost import count

    if method not in ("svd", "tucker2"):
        raise OptionError(f"--method={method!r} not in {{svd, tucker2}}")
    src = read_source(source, weights, need_weights=True)
    base = src.model.eval()
    policy, report = _choose(base, energy, latency_budget, lut, ranks, method)
    data = _data(src, dataset, seed)
    model = factorize(base, policy)
    before_finetune = evaluate(model, data.val)
    train_report = distilled_finetune(model, base, data, TrainConfig(seed=seed), epochs=epochs) if epochs else None
    model.eval()
    out_dir = _output_dir(src, "lowrank", out)
    policy.save(out_dir / "policy.json")
    save(model, model.spec, out_dir)
    original, factorized = count(src.spec), count(model.spec)
    metrics: dict[str, Any] = {
        "params": [original.params, factorized.params], "macs": [original.macs, factorized.macs],
        "factorized_layers": len(policy.ranks), "method": policy.settings.get("method", method), **report,
        "val_accuracy_original": evaluate(base, data.val),
        "val_accuracy_before_finetune": before_finetune,
        "val_accuracy": train_report.val_accuracy if train_report else before_finetune,
        "test_accuracy": train_report.test_accuracy if train_report else None, "finetune_epochs": epochs,
    }
    if measure:
        measured = make_measurer("onnxruntime", 1).measure_archs([src.spec, model.spec])
        metrics["latency_ms_onnxruntime_1thread"] = [m.median_ms for m in measured]
    _write(out_dir, "metrics.json", metrics)
    console.print(f"{out_dir}: {len(policy.ranks)} layers factorized ({method}); params {original.params:,} -> "
                  f"{factorized.params:,}, MACs {original.macs:,} -> {factorized.macs:,}, val accuracy "
                  f"{metrics['val_accuracy_original']:.4f} -> {metrics['val_accuracy']:.4f}")
