"""`nas compress lottery SOURCE`: lottery tickets by iterative magnitude pruning with rewinding
(`compress.lottery`), and the controls that judge them.

SOURCE gives the architecture; IMP starts from a fresh random initialisation of it (seeded), so a
spec or `zoo:NAME` is enough. When SOURCE has trained weights they give two more rows per target:
``scratch`` (its one-shot magnitude masks on a random init, trained like a ticket) and
``finetune`` (it, pruned with those masks, distilled fine-tune). Results land in `--out`
(default `<run>/compress/lottery/`): per target ``ticket_<sparsity>/`` with arch.json,
weights.safetensors (zeros in place) and masks.safetensors (0/1 uint8, keyed by weight name),
and metrics.json with every row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from nas.commands.common import fail_on_user_error
from nas.commands.compress import _data, _output_dir, compress_app, console, read_source
from search_spaces.errors import OptionError


def parse_sparsities(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"sparsity={text!r}: expected comma-separated fractions in [0, 1), e.g. 0.5,0.8,0.9") from None


def save_masks(masks: dict[str, Any], path: Path, sparsity: float) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {f"{name}.weight": mask.to("cpu", torch.uint8).contiguous() for name, mask in masks.items()}
    save_file(tensors, str(path), metadata={"kind": "lottery-masks", "sparsity": repr(sparsity)})


@compress_app.command("lottery")
@fail_on_user_error
def lottery(
    source: str = typer.Argument(..., help="A run (its best/), a model directory, a spec JSON or zoo:NAME."),
    sparsity: str = typer.Option("0.5,0.8,0.9", help="Target sparsities (fraction of conv/linear weights at "
                                 "zero), strictly increasing, each in [0, 1)."),
    rewind_steps: int = typer.Option(0, help="Rewind survivors to their values after this many steps of the "
                                     "dense training (0: the initialisation, as Frankle & Carbin 2019)."),
    rounds: int = typer.Option(1, help="Prune-retrain rounds to reach each target (geometric)."),
    epochs: int = typer.Option(2, help="Epochs of the dense training and of every retraining."),
    scope: str = typer.Option("layer", help="layer | global: each conv/linear weight to the target, or all "
                              "ranked together (can empty whole depthwise layers)."),
    controls: bool = typer.Option(True, "--controls/--no-controls", help="Also train the reinit (and, with "
                                  "weights, scratch and fine-tune) controls."),
    dataset: Optional[str] = typer.Option(None, help="Default: the run's dataset."),
    weights: Optional[Path] = typer.Option(None),
    out: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
) -> None:
    """Lottery tickets (IMP with rewinding) at each target sparsity, with their controls."""
    import torch

    from compress.lottery import LotteryPlan, compare_tickets, find_tickets
    from compress.sparsity import sparsity_of
    from nas.rundir.model_files import save
    from nas.training import TrainConfig, distilled_finetune, evaluate
    from nas.training.train import train
    from search_spaces.build import build_model

    plan = LotteryPlan(parse_sparsities(sparsity), rounds=rounds, rewind_steps=rewind_steps, scope=scope)
    if epochs < 1:
        raise OptionError(f"epochs={epochs}: expected an int >= 1")
    src = read_source(source, weights, need_weights=False)
    data = _data(src, dataset, seed)
    config = TrainConfig(epochs=epochs, seed=seed)
    torch.manual_seed(seed)  # weight init is the caller's business (nas.training.train's contract)
    init = build_model(src.spec)
    seeds = iter(range(seed + 1, seed + 10_000))

    def fresh() -> Any:
        torch.manual_seed(next(seeds))
        return build_model(src.spec)

    def train_fn(model: Any) -> dict[str, Any]:
        return train(model, data, config, evaluate_test=True).to_dict()

    def evaluate_fn(model: Any) -> float:
        return evaluate(model, data.test)

    if controls:
        finetune = (lambda model: distilled_finetune(model, src.model, data, TrainConfig(seed=seed),
                                                     epochs=epochs).to_dict()) if src.model is not None else None
        result = compare_tickets(init, plan, train=train_fn, evaluate=evaluate_fn, fresh=fresh,
                                 trained=src.model, finetune=finetune)
        tickets, rows, dense = result.tickets, result.rows, result.dense
    else:
        tickets, dense = find_tickets(init, train_fn, plan)
        rows = [{"sparsity": t.sparsity, "method": "rewind", "accuracy": evaluate_fn(t.model),
                 "measured_sparsity": sparsity_of(t.model)["total"]} for t in tickets]
    out_dir = _output_dir(src, "lottery", out)
    for ticket in tickets:
        directory = out_dir / f"ticket_{ticket.sparsity:.2f}"
        directory.mkdir(parents=True, exist_ok=True)
        save(ticket.model, src.spec, directory)
        save_masks(ticket.masks, directory / "masks.safetensors", ticket.sparsity)
    metrics = {"plan": {"sparsities": list(plan.sparsities), "rounds": plan.rounds, "rewind_steps": plan.rewind_steps,
                        "scope": plan.scope}, "epochs": epochs, "seed": seed, "rewound_to_step": dense["rewind_step"],
               "dense_report": dense["dense_report"],
               "rows": rows, "ticket_reports": [t.report for t in tickets]}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    console.print(f"{out_dir}: {len(tickets)} ticket(s), rewound to step {dense['rewind_step']}; the dense network, "
                  f"trained alike: test accuracy {dense['dense_report']['test_accuracy']:.4f}")
    for row in rows:
        console.print(f"  {row['sparsity']:.2f} {row['method']:>8}: test accuracy {row['accuracy']:.4f}")
