"""Low-rank factorization vs uniform l1 channel pruning at matched measured latency (issue #18).

On the trained base: SVD factorization of every layer where it saves MACs, at a few energy levels
(`compress.lowrank_policy.energy_policy`; in this MobileNetV2 the factorizable layers are the 3x3
stem conv, the 1x1 expand/project convs, the head's 1x1 conv and the classifier: depthwise convs
have no rank to cut). Pruning candidates at `PRUNE_RATIOS` are measured in the same
interleaved ONNX Runtime call as the low-rank models; for each low-rank model the ratio whose
latency lands nearest is fine-tuned and reported beside it, so the two methods are compared at
(nearly) equal measured latency, not equal MACs.
"""

from __future__ import annotations

import logging
from typing import Any

from bench.toolbox_context import ToolboxContext
from compress.lowrank import factorize
from compress.lowrank_policy import energy_policy
from compress.prune import PrunePolicy, prune
from predictors.cost import count
from search_spaces.build import build_model

logger = logging.getLogger("bench.toolbox_lowrank")

# two levels keep the default cost near 10 min on 2 cores: at most 4 distilled fine-tunes of 2 epochs
ENERGIES = (0.8, 0.6)
PRUNE_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
ROUND_TO = 8


def _row(ctx: ToolboxContext, method: str, setting: str, model: Any, latency: dict[str, float],
         finetune: bool) -> dict[str, Any]:
    cost = count(model.spec)
    before = ctx.test_accuracy(model)
    accuracy = ctx.finetune(model).test_accuracy if finetune else before
    logger.info("%s %s: MACs %d, latency %.3f ms, test acc %.4f -> %.4f", method, setting, cost.macs,
                latency["median_ms"], before, accuracy)
    return {"method": method, "setting": setting, "latency_ms": latency["median_ms"], "latency": latency,
            "test_accuracy_before_finetune": before, "test_accuracy": accuracy, "macs": cost.macs,
            "params": cost.params}


def run(ctx: ToolboxContext) -> dict[str, Any]:
    base = ctx.fresh_base().eval()
    lowrank, details = {}, {}
    for energy in ENERGIES:
        policy, skipped = energy_policy(base, energy, "svd")
        lowrank[f"energy {energy:g}"] = factorize(base, policy).eval()
        details[f"energy {energy:g}"] = {"factorized": len(policy.ranks), "skipped": len(skipped),
                                         "ranks": {name: list(r) for name, r in policy.ranks.items()}}
    state = {key: value.detach().cpu().clone() for key, value in base.state_dict().items()}
    pruned = {}
    for ratio in PRUNE_RATIOS:
        spec, pruned_state = prune(ctx.spec, PrunePolicy.uniform(ctx.spec, ratio, "l1", round_to=ROUND_TO), state)
        model = build_model(spec)
        model.load_state_dict(pruned_state, strict=True)
        pruned[f"ratio {ratio:g}"] = model.eval()
    # one interleaved measurement of everything, so machine drift hits all candidates alike
    latency = ctx.latency_ms({"base": base, **{f"lowrank {k}": m for k, m in lowrank.items()},
                              **{f"prune {k}": m for k, m in pruned.items()}})
    matches = {}
    for setting in lowrank:
        target = latency[f"lowrank {setting}"]["median_ms"]
        matches[setting] = min(pruned, key=lambda k: abs(latency[f"prune {k}"]["median_ms"] - target))
    rows = [_row(ctx, "base", "fp32", base, latency["base"], finetune=False)]
    # a low-rank model slower than every candidate (or than the base) is matched to the fastest-but-nearest one;
    # `latency_vs_base` in each row shows how near "matched" is
    for setting, model in lowrank.items():
        rows.append({**_row(ctx, "low-rank (SVD)", setting, model, latency[f"lowrank {setting}"], True),
                     **{key: value for key, value in details[setting].items() if key != "ranks"}})
    for setting in sorted(set(matches.values()), key=lambda k: float(k.split()[1])):
        row = _row(ctx, "l1 pruning", setting, pruned[setting], latency[f"prune {setting}"], True)
        row["matched_to"] = [lr for lr, ratio in matches.items() if ratio == setting]
        rows.append(row)
    for row in rows:
        row["latency_vs_base"] = row["latency_ms"] / latency["base"]["median_ms"]
    return {"energies": list(ENERGIES), "prune_ratios": list(PRUNE_RATIOS), "round_to": ROUND_TO,
            "finetune_epochs": ctx.finetune_epochs, "rows": rows,
            "candidate_latency_ms": {name: m["median_ms"] for name, m in latency.items()},
            "ranks": {setting: d["ranks"] for setting, d in details.items()}}


def render(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    base = rows[0]
    lines = [
        "### Low-rank factorization vs channel pruning at equal measured latency",
        "",
        f"SVD factorization (`nas compress lowrank --energy E`) of every layer where a rank keeping E of the "
        f"squared singular values saves MACs, at E = {', '.join(f'{e:g}' for e in result['energies'])}; uniform "
        f"l1 channel pruning (multiples of {result['round_to']}) at the ratio whose ONNX Runtime latency (1 thread, "
        f"batch 1, all candidates in one interleaved measurement) lands nearest each low-rank model's. Each model "
        f"then gets {result['finetune_epochs']} epoch(s) of distilled fine-tune. In MobileNetV2 only the stem, "
        "the 1x1 convs and the classifier can be factorized (depthwise convs have no rank to cut), and each "
        "factorized conv becomes two: MACs fall faster than latency.",
        "",
        "| method | setting | MACs | params | latency ms | test acc before FT | test acc |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        setting = row["setting"] + (f" (≈ {', '.join(row['matched_to'])})" if row.get("matched_to") else "")
        lines.append(f"| {row['method']} | {setting} | {row['macs'] / 1e6:.2f}M ({row['macs'] / base['macs']:.0%}) | "
                     f"{row['params'] / 1e3:.0f}k | {row['latency_ms']:.3f} | "
                     f"{100 * row['test_accuracy_before_finetune']:.2f}% | {100 * row['test_accuracy']:.2f}% |")
    return lines
