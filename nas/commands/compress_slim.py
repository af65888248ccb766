"""`nas compress slim SOURCE`: sparsity training, then physical channel removal, then fine-tune.

Network slimming (Liu et al., ICCV 2017: L1 on batch-norm gammas, channels ranked by |gamma|,
criterion ``bn``) or SSL (Wen et al., NeurIPS 2016: group lasso on filters and channels, ranked by
filter L1 norm, criterion ``l1``). The trained SOURCE is trained on with the penalty (the
distilled fine-tune recipe, SOURCE as teacher), pruned by `compress.prune` at one ratio on every
prunable unit, and fine-tuned without the penalty. Results land in `--out` (default
`<run>/compress/slim/`): arch.json, weights.safetensors, policy.json and metrics.json.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import typer

from nas.commands.common import fail_on_user_error
from nas.commands.compress import _data, _output_dir, compress_app, console, read_source
from search_spaces.errors import OptionError


@compress_app.command("slim")
@fail_on_user_error
def slim(
    source: str = typer.Argument(..., help="A run (its best/), or a model directory."),
    bn_l1: float = typer.Option(0.0, help="Network slimming: L1 coefficient on BN gammas (e.g. 1e-4)."),
    group_lasso: float = typer.Option(0.0, help="SSL: group-lasso coefficient on filters and channels."),
    ratio: float = typer.Option(0.5, help="Fraction of channels removed from every prunable unit."),
    criterion: Optional[str] = typer.Option(None, help="l1 | bn | fpgm; default: bn with --bn-l1, else l1."),
    epochs: int = typer.Option(3, help="Epochs of the penalised training, and again of the fine-tune."),
    dataset: Optional[str] = typer.Option(None, help="Default: the run's dataset."),
    weights: Optional[Path] = typer.Option(None),
    out: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
) -> None:
    """Train with a sparsity penalty, remove channels, fine-tune with distillation."""
    from compress.prune import MAX_RATIO, PrunePolicy, plan_prune, prune
    from nas.rundir.model_files import save
    from nas.training import TrainConfig, distilled_finetune, evaluate
    from predictors.cost import count
    from search_spaces.build import build_model

    penalised = TrainConfig(seed=seed, bn_l1=bn_l1, group_lasso=group_lasso)  # refuses negative coefficients
    if not (bn_l1 or group_lasso):
        raise OptionError("bn_l1 / group_lasso: give --bn-l1 or --group-lasso > 0 (without a penalty use "
                          "`nas compress prune`)")
    if isinstance(ratio, bool) or not 0.0 < ratio <= MAX_RATIO:
        raise OptionError(f"ratio={ratio!r}: expected a fraction in (0, {MAX_RATIO}]")
    if epochs < 1:
        raise OptionError(f"epochs={epochs}: expected an int >= 1")
    src = read_source(source, weights, need_weights=True)
    policy = PrunePolicy.uniform(src.spec, ratio, criterion or ("bn" if bn_l1 else "l1"))
    data = _data(src, dataset, seed)
    model = copy.deepcopy(src.model)
    sparse_report = distilled_finetune(model, src.model, data, penalised, epochs=epochs)
    pruned_spec, state = prune(src.spec, policy, model.state_dict())
    pruned = build_model(pruned_spec)
    pruned.load_state_dict(state, strict=True)
    before_finetune = evaluate(pruned, data.test)
    report = distilled_finetune(pruned, src.model, data, TrainConfig(seed=seed), epochs=epochs)
    out_dir = _output_dir(src, "slim", out)
    policy.save(out_dir / "policy.json")
    save(pruned, pruned_spec, out_dir)
    base, small = count(src.spec), count(pruned_spec)
    metrics: dict[str, Any] = {
        "bn_l1": bn_l1, "group_lasso": group_lasso, "criterion": policy.criterion, "ratio": ratio, "epochs": epochs,
        "params": [base.params, small.params], "macs": [base.macs, small.macs],
        "test_accuracy_source": evaluate(src.model, data.test),
        "test_accuracy_penalised": sparse_report.test_accuracy,
        "test_accuracy_pruned_before_finetune": before_finetune,
        "test_accuracy": report.test_accuracy,
        "changed_widths": {name: list(w) for name, w in plan_prune(src.spec, policy).widths.items()},
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    console.print(f"{out_dir}: params {base.params:,} -> {small.params:,}; test accuracy "
                  f"{metrics['test_accuracy_source']:.4f} -> penalised {sparse_report.test_accuracy:.4f} -> pruned "
                  f"{before_finetune:.4f} -> fine-tuned {report.test_accuracy:.4f}")
