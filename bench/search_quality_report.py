"""The search-quality section: the raw results document (`bench/results/search_quality.json`) and
its Markdown rendering."""

from __future__ import annotations

import statistics
from typing import Any

from bench.baselines import ZOO_BASELINES
from bench.report import fmt, md_table
from bench.search_signals import kendall

PARTIAL_EPOCHS = (1, 3, 6)  # the final run's val accuracy after these epochs: the partial-training signals


def results_document(r: dict[str, Any]) -> dict[str, Any]:
    """{"default_strategy", "budget_ms", "runs": [...], "curve", "summary", "paired", "tau"}."""
    runs = []
    for key, row in r["searches"].items():
        final = row.get("final") or {}
        runs.append({"key": key, "strategy": row.get("strategy", key.rsplit("-s", 1)[0]), "seed": row.get("seed"),
                     "final_test_acc": _pct(final.get("test_accuracy")),
                     "measured_ms": r["measured"].get(key, {}).get("median_ms"),
                     "search_wall_s": row.get("search_wall_s"), "predicted_ms": row.get("predicted_ms"),
                     "trials": row.get("trials"), "search_val_acc": _pct(row.get("best_val_accuracy")),
                     "params": final.get("params"), "macs": final.get("macs"), "final_wall_s": final.get("wall_s"),
                     "val_per_epoch": final.get("val_accuracy_per_epoch"), "error": row.get("error")})
    for name, fit in r["zoo_fits"].items():
        for seed in r["settings"]["seeds"]:
            final = r["trained"].get(f"zoo-{name}-s{seed}", {})
            runs.append({"key": f"zoo-{name}", "strategy": f"zoo:{name}", "seed": seed,
                         "final_test_acc": _pct(final.get("test_accuracy")),
                         "measured_ms": r["measured"].get(f"zoo-{name}", {}).get("median_ms"), "search_wall_s": 0.0,
                         "width": fit["width"], "params": final.get("params"), "macs": final.get("macs"),
                         "final_wall_s": final.get("wall_s"), "val_per_epoch": final.get("val_accuracy_per_epoch"),
                         "error": final.get("error")})
    curve = _curve(r)
    return {"default_strategy": r["default_strategy"], "budget_ms": r["budget_ms"], "runs": runs, "curve": curve,
            "summary": _summary(runs, r["budget_ms"]), "paired": _paired(runs, r["default_strategy"], r["baseline"]),
            "tau": _tau(runs, r)}


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _curve(r: dict[str, Any]) -> list[dict[str, Any]]:
    zoo = r["settings"]["zoo"]
    if not zoo:
        return []
    first, seed = zoo[0], r["settings"]["seeds"][0]
    rows = [r["trained"].get(f"curve-{first}-e{e}", {}) for e in r["settings"]["curve_epochs"]]
    rows.append(r["trained"].get(f"zoo-{first}-s{seed}", {}))
    return sorted(({"model": first, "seed": seed, "epochs": row["epochs"], "test_acc": _pct(row["test_accuracy"]),
                    "val_acc": _pct(row["val_accuracy"]), "wall_s": row["wall_s"]}
                   for row in rows if row.get("test_accuracy") is not None), key=lambda row: row["epochs"])


def _summary(runs: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    out = []
    for strategy in dict.fromkeys(run["strategy"] for run in runs):
        done = [run for run in runs if run["strategy"] == strategy and run["final_test_acc"] is not None]
        tests = [run["final_test_acc"] for run in done]
        if not tests:
            continue
        measured = [run["measured_ms"] for run in done if run["measured_ms"] is not None]
        out.append({"strategy": strategy, "n": len(tests), "mean": statistics.fmean(tests),
                    "sd": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                    "within_budget": sum(ms <= budget for ms in measured), "measured": len(measured),
                    "search_wall_s": statistics.fmean(run["search_wall_s"] or 0.0 for run in done)})
    return out


def _paired(runs: list[dict[str, Any]], default: str, baseline: str) -> list[dict[str, Any]]:
    """Per seed, the default strategy minus each other strategy and zoo network (same seed)."""
    by = {(run["strategy"], run["seed"]): run["final_test_acc"] for run in runs if run["final_test_acc"] is not None}
    out = []
    for other in dict.fromkeys(run["strategy"] for run in runs if run["strategy"] != default):
        diffs = {seed: by[(default, seed)] - by[(other, seed)] for (strategy, seed) in by
                 if strategy == other and (default, seed) in by}
        if diffs:
            out.append({"other": other, "per_seed": diffs, "mean": statistics.fmean(diffs.values()),
                        "positive_every_seed": all(d > 0 for d in diffs.values()),
                        "baseline": other == baseline})
    return out


def _tau(runs: list[dict[str, Any]], r: dict[str, Any]) -> list[dict[str, Any]]:
    done = [run for run in runs if run["final_test_acc"] is not None]
    target = [run["final_test_acc"] for run in done]
    signals: dict[str, list[float | None]] = {}
    signals["short training (search recipe, seed 0): val acc"] = [
        r["short"].get(run["key"], {}).get("val_accuracy") for run in done]
    signals["search trial val acc (searched nets only)"] = [run.get("search_val_acc") for run in done]
    for epoch in PARTIAL_EPOCHS:
        signals[f"final run's val acc after epoch {epoch}"] = [
            run["val_per_epoch"][epoch - 1] if len(run["val_per_epoch"] or ()) >= epoch else None for run in done]
    names = [name for name in r["settings"]["proxies"]] + ["params", "macs"]
    for name in names:
        signals[name] = [r["signals"].get(run["key"], {}).get(name) for run in done]
    signals["measured latency"] = [run["measured_ms"] for run in done]
    return [{"signal": name, **kendall(values, target)} for name, values in signals.items()]


def render(r: dict[str, Any], doc: dict[str, Any]) -> str:
    s, budget, phases = r["settings"], r["budget_ms"], r["phases"]
    spent = ", ".join(f"{key[:-2]} {value / 60:.1f} min" for key, value in phases.items() if key != "total_s")
    final_images = "all 9,000" if s["final_limit"] is None else f"{s['final_limit']:,}"
    lines = [
        (f"**Budget {budget:.3f} ms** (onnxruntime, {r['lut_threads']} thread, batch 1): {r['budget_how']}. Table "
         f"`{r['lut_shown']}` ({r['lut_state']}; {r['lut_calibration']}). Every final network measured end to end in "
         f"one interleaved call (protocol {s['measure']}) after all training."),
        "",
        (f"Search: `mnasnet` space at 32 px, hard constraint, **{s['search_seconds']:.0f} s of search wall time per "
         f"strategy and seed** (trial cap {s['trials_cap']}); trials train {s['epochs']} epochs on {s['train_limit']} "
         f"stratified images (batch {s['batch_size']}), scored on the 1,000-image val split. Seeds {s['seeds']}. "
         f"**Final recipe**, the same for every network: {s['final_epochs']} epochs from scratch on {final_images} "
         "training images, SGD (Nesterov, lr 0.05, cosine), batch 64, random crop (pad 4) + flip, label smoothing "
         "0.1, weight decay 5e-4; test = the subset's 2,000 test images; seed = the search's (zoo: each seed). "
         f"{s['jobs']} jobs in parallel, 1 torch thread each; 1-min load average at start {r['load_at_start']:.1f}. "
         f"**Wall time {phases['total_s'] / 60:.1f} min** ({spent}; cached work is not counted again)."),
    ]
    if doc["curve"]:
        lines += ["", f"Length of the final recipe ({ZOO_BASELINES.get(doc['curve'][0]['model'])}, seed "
                      f"{doc['curve'][0]['seed']}; the noise floor is the spread over seeds below):"]
        lines += md_table(["epochs", "test acc", "val acc", "train wall"],
                          [[str(c["epochs"]), f"{c['test_acc']:.2f}%", f"{c['val_acc']:.2f}%", f"{c['wall_s'] / 60:.1f} min"]
                           for c in doc["curve"]])
    rows = []
    for run in doc["runs"]:
        ms = run["measured_ms"]
        rows.append([run["strategy"], str(run["seed"]), fmt(run.get("trials"), "d") if run.get("trials") else "—",
                     fmt(run.get("search_val_acc"), ".1f", "%"), fmt(run["final_test_acc"], ".2f", "%"),
                     fmt(run.get("predicted_ms"), ".3f"), fmt(ms, ".3f") + ("" if ms is None or ms <= budget else " (over)"),
                     fmt(run["params"] and run["params"] / 1e6, ".2f", " M"), fmt(run["macs"] and run["macs"] / 1e6, ".1f", " M"),
                     fmt(run["search_wall_s"], ".0f", " s"), fmt(run["final_wall_s"] and run["final_wall_s"] / 60, ".1f", " min")])
    lines += [""] + md_table(["strategy", "seed", "trials", "best search val", "final test", "predicted ms",
                              "measured ms", "params", "MACs", "search wall", "final train"], rows)
    lines += [""] + md_table(
        ["strategy", "runs", "final test, mean ± sd", "measured within budget", "search wall (mean)"],
        [[row["strategy"], str(row["n"]), f"{row['mean']:.2f} ± {row['sd']:.2f}%",
          f"{row['within_budget']} / {row['measured']}", f"{row['search_wall_s']:.0f} s"] for row in doc["summary"]])
    lines += ["", f"Paired differences, `{doc['default_strategy']}` minus each other (same seed), points:"]
    lines += md_table(["vs", "per seed", "mean", "positive on every seed"],
                      [[p["other"], ", ".join(f"s{k}: {v:+.2f}" for k, v in p["per_seed"].items()), f"{p['mean']:+.2f}",
                        "yes" if p["positive_every_seed"] else "no"] for p in doc["paired"]])
    lines += ["", "Kendall tau-b of each signal with the final test accuracy over the runs above (a zoo network "
                  "counts once per seed, with its one signal value):"]
    lines += md_table(["signal", "runs", "tau", "p"],
                      [[t["signal"], str(t["n"]), fmt(t["tau"], "+.2f"), fmt(t["p"], ".2f")] for t in doc["tau"]])
    lines += ["", f"Raw results: `{r['results_shown']}`; run directories, cached trainings and task logs in "
                  f"`{r['out_shown']}`."]
    return "\n".join(lines)
