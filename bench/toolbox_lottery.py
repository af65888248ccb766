"""Toolbox study: lottery tickets against their controls, and network slimming against no penalty.

Part 1, at 50/20/10% of every conv/linear weight tensor remaining (layer-wise magnitude scope):
(a) IMP with rewinding (`compress.lottery`): a fresh init trained for the retrain budget, survivors
rewound to their values after k steps, one prune-retrain round per target; (b) the same masks on a
random re-initialisation; (c) from scratch (Liu et al., ICLR 2019): the masks one-shot pruning
takes from the trained base, random init; (d) the usual baseline: the trained base pruned with
those masks, distilled fine-tune. (a)-(c) train with the base recipe, (d) with the project's
distilled fine-tune; every (re)training gets the same moderate budget, so the whole study fits in
~15 minutes on 2 cores.

Part 2: the trained base trained on for the same budget with network slimming's L1 on BN gammas
(Liu et al., ICCV 2017) and without it, then each 50% channel-pruned by |gamma| (`compress.prune`,
criterion ``bn``) and fine-tuned.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from bench.toolbox_context import ToolboxContext
from compress.lottery import LotteryPlan, compare_tickets
from compress.prune import PrunePolicy, prune_model
from compress.regularize import bn_l1_penalty
from nas.training.train import train
from search_spaces.build import build_model

SPARSITIES = (0.5, 0.8, 0.9)
REWIND_FRACTION = 0.05  # rewind to 5% of the dense run, inside Frankle et al.'s (2020) 0.1-7% range
# 100x Liu et al.'s CIFAR 1e-4 (SGD, 160 epochs): the distilled fine-tune's AdamW moves a gamma by at
# most ~lr = 1e-3 a step, so the pull must dominate unimportant channels' loss gradient from the start
BN_L1 = 1e-2
SLIM_RATIO = 0.5
METHODS = ("rewind", "reinit", "scratch", "finetune")


def retrain_epochs(ctx: ToolboxContext) -> int:
    """Every (re)training of the study: half the fine-tune budget (17 trainings in all)."""
    return max(1, ctx.finetune_epochs // 2)


def _steps_per_epoch(ctx: ToolboxContext) -> int:
    n, batch = len(ctx.data.train), ctx.config.batch_size
    steps = n // batch if n > batch else 1
    return min(steps, ctx.config.max_batches_per_epoch or steps)


def _gammas(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])


def _lottery(ctx: ToolboxContext, epochs: int, rewind: int) -> dict[str, Any]:
    config = replace(ctx.config, epochs=epochs)
    seeds = iter(range(ctx.seed + 1, ctx.seed + 1000))

    def fresh() -> nn.Module:
        torch.manual_seed(next(seeds))
        return build_model(ctx.spec)

    def train_fn(model: nn.Module) -> dict[str, Any]:
        return train(model, ctx.data, config, evaluate_test=True).to_dict()

    torch.manual_seed(ctx.seed + 1000)  # not the base's own init: rewinding needs the dense run's early weights
    init = build_model(ctx.spec)
    result = compare_tickets(init, LotteryPlan(SPARSITIES, rounds=1, rewind_steps=rewind), train=train_fn,
                             evaluate=ctx.test_accuracy, fresh=fresh, trained=ctx.base,
                             finetune=lambda model: ctx.finetune(model, epochs).to_dict())
    return {"rows": result.rows, "rewound_to_step": result.dense["rewind_step"],
            "dense_same_budget": result.dense["dense_report"]["test_accuracy"]}


def _slimming(ctx: ToolboxContext, epochs: int) -> list[dict[str, Any]]:
    rows = []
    for label, coefficient in (("no penalty", 0.0), (f"BN L1 {BN_L1:g}", BN_L1)):
        model = ctx.fresh_base()
        report = ctx.finetune(model, epochs, bn_l1=coefficient)
        gammas = _gammas(model)
        pruned = prune_model(model, PrunePolicy.uniform(ctx.spec, SLIM_RATIO, "bn"))
        pruned_accuracy = ctx.test_accuracy(pruned)
        finetuned = ctx.finetune(pruned, epochs)
        rows.append({"label": label, "bn_l1": coefficient, "trained_accuracy": report.test_accuracy,
                     "gamma_l1": float(bn_l1_penalty(model).detach()), "gammas_below_0.05": float((gammas < 0.05).float().mean()),
                     "pruned_accuracy": pruned_accuracy, "finetuned_accuracy": finetuned.test_accuracy,
                     "params": [sum(p.numel() for p in model.parameters()), sum(p.numel() for p in pruned.parameters())]})
    return rows


def run(ctx: ToolboxContext) -> dict[str, Any]:
    start = time.perf_counter()
    epochs = retrain_epochs(ctx)
    rewind = max(1, round(REWIND_FRACTION * epochs * _steps_per_epoch(ctx)))
    lottery = _lottery(ctx, epochs, rewind)
    lottery_s = time.perf_counter() - start
    slimming = _slimming(ctx, epochs)
    return {"epochs": epochs, "rewind_steps": rewind, "steps_per_epoch": _steps_per_epoch(ctx),
            "base_accuracy": ctx.base_accuracy, "sparsities": list(SPARSITIES), **lottery,
            "slimming": slimming, "slim_ratio": SLIM_RATIO, "lottery_s": lottery_s,
            "wall_s": time.perf_counter() - start}


def render(result: dict[str, Any]) -> list[str]:
    e = result["epochs"]
    by = {(row["sparsity"], row["method"]): row["accuracy"] for row in result["rows"]}
    lines = [
        "### Lottery tickets, random re-init, from scratch, and fine-tuning",
        "",
        "Unstructured magnitude pruning, each conv/linear weight tensor to the target (a global ranking, as the "
        "lottery paper uses for deep conv nets, emptied whole depthwise convs and the classifier by 80% on a small "
        f"MobileNet-like net: layer collapse). Every (re)training here is {e} epoch(s) -- the "
        "papers train each round on the full schedule, so (a)-(c), which start from (near) random weights, compare "
        f"with a dense fresh network trained for the same {e} epoch(s) ({result['dense_same_budget']:.1%}), not with "
        f"the base ({result['base_accuracy']:.1%}, its full recipe). (a) IMP (Frankle & Carbin, 2019) "
        f"trains a fresh init for {e} epoch(s), prunes, rewinds the survivors to step {result['rewound_to_step']} "
        f"of {e * result['steps_per_epoch']} (Frankle et al., 2020) and retrains, one round per target; (b) the "
        "same masks on a random re-init; (c) from scratch (Liu et al., 2019): for unstructured sparsity the pruned "
        "architecture is the mask, here one-shot from the trained base, trained from random init with the same "
        f"{e}-epoch schedule (not the full one); (d) the trained base pruned with those masks and given the "
        "distilled fine-tune. (a) against (b) says whether the ticket's initialisation matters at this budget; "
        "(c) against (d) whether the trained weights do. Test accuracy:",
        "",
        "| weights left | (a) IMP + rewind | (b) same masks, re-init | (c) from scratch | (d) prune + fine-tune |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in result["sparsities"]:
        cells = [f"{by[(s, m)]:.1%}" if (s, m) in by else "-" for m in METHODS]
        lines.append(f"| {1 - s:.0%} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Network slimming: the trained base trained on for {e} epoch(s) (distilled fine-tune recipe) with the "
        f"BN-gamma L1 penalty and without it, then {result['slim_ratio']:.0%} of every prunable unit's channels "
        f"removed by |gamma| and {e} epoch(s) of distilled fine-tune:",
        "",
        "| penalty | accuracy after training | sum abs(gamma) | gammas < 0.05 | pruned, no fine-tune | fine-tuned | params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["slimming"]:
        lines.append(f"| {row['label']} | {row['trained_accuracy']:.1%} | {row['gamma_l1']:.1f} | "
                     f"{row['gammas_below_0.05']:.1%} | {row['pruned_accuracy']:.1%} | {row['finetuned_accuracy']:.1%} | "
                     f"{row['params'][0]:,} -> {row['params'][1]:,} |")
    lines += ["", f"Study wall time {result['wall_s'] / 60:.1f} min (lottery part {result['lottery_s'] / 60:.1f} min)."]
    return lines
