"""`write_report`: PNG figures and an index.html for a run, finished or still going.

Figures (matplotlib's object API on the Agg canvas: no display, no pyplot global state):

- ``accuracy_latency.png``: validation accuracy vs LUT-predicted latency of every trained trial,
  feasible and over-budget marked apart, infeasible untrained trials as ticks on the latency
  axis, the Pareto front (`nas.strategies.objective.pareto_front`) and the budget line; failed trials counted.
- ``progress.png``: best feasible accuracy so far vs trial id, over each trial's accuracy.
- ``layer_latency.png``: LUT latency per layer of the best architecture, coloured by op.

A run in progress is fine: a torn last line of trials.jsonl is skipped, best/ may be absent (the
most accurate feasible trial stands in), and a figure without data says so instead of failing.
"""

from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nas.strategies.objective import pareto_front
from nas.rundir.records import TrialRecord
from nas.rundir.runinfo import RunInfo, read_run

logger = logging.getLogger(__name__)

__all__ = ["FIGURES", "ReportFiles", "top_trials", "write_report"]

FIGURES = ("accuracy_latency.png", "progress.png", "layer_latency.png")
OP_COLORS = {"stem": "#7f7f7f", "mbconv": "#1f77b4", "shuffle": "#ff7f0e", "ghost": "#2ca02c",
             "dsconv": "#9467bd", "head": "#8c564b"}
DPI = 110


@dataclass
class ReportFiles:
    directory: Path
    index: Path
    figures: list[Path]


def _axes(width: float, **labels: str) -> Any:
    """The axes of a new figure `width` x 4.8 inches, with `labels` (title, xlabel, ylabel) set."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, 4.8), dpi=DPI, layout="constrained").add_subplot(**labels)


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#555555",
            wrap=True)


def _points(records: list[TrialRecord]) -> tuple[list[float], list[float]]:  # x: latency, y: accuracy %
    return [r.result.latency_ms for r in records], [100 * r.result.accuracy for r in records]


def plot_accuracy_latency(info: RunInfo, path: Path) -> None:
    # wide: the legend sits outside the axes, clear of the points
    ax = _axes(9.0, title=f"{info.name}: accuracy vs predicted latency ({len(info.trials)} trials)",
               xlabel="LUT-predicted latency (ms)", ylabel="validation accuracy (%)")
    budget = info.budget_ms
    trained = [r for r in info.trials if r.result.accuracy is not None and r.result.latency_ms is not None]
    feasible = [r for r in trained if r.feasible]
    over = [r for r in trained if not r.feasible]
    untrained = [r for r in info.trials if r.result.accuracy is None and r.result.status == "infeasible"
                 and r.result.latency_ms is not None]
    failed = info.count(["failed"])
    if feasible:
        ax.scatter(*_points(feasible), s=28,
                   color="#1f77b4", alpha=0.8, label=f"feasible ({len(feasible)})", zorder=3)
    if over:
        ax.scatter(*_points(over), s=34, marker="x",
                   color="#d62728", label=f"over budget, trained ({len(over)})", zorder=3)
    if trained:
        points = [(r.result.accuracy, r.result.latency_ms) for r in trained]
        front = sorted((points[i] for i in pareto_front(points)), key=lambda p: p[1])
        # the attainment staircase runs on to the slowest trial, so a one-point front still shows a line
        right = max(p[1] for p in points)
        ax.step([p[1] for p in front] + [right], [100 * p[0] for p in front] + [100 * front[-1][0]], where="post",
                color="#2ca02c", linewidth=1.6, zorder=4)
        ax.plot([p[1] for p in front], [100 * p[0] for p in front], "o", markerfacecolor="none", markersize=9,
                color="#2ca02c", zorder=6)
        ax.plot([], [], "-o", color="#2ca02c", markerfacecolor="none", label=f"Pareto front ({len(front)})")
        leader = max(feasible, key=lambda r: r.result.accuracy) if feasible else None
        if leader is not None:
            ax.scatter(*_points([leader]), s=160, marker="*", color="#ffbf00",
                       edgecolor="black", label=f"best feasible (trial {leader.trial_id})", zorder=5)
    if untrained:
        # no accuracy: a tick along the bottom edge shows where their latencies fell
        ax.plot([r.result.latency_ms for r in untrained], [0.01] * len(untrained), "|", color="#d62728",
                markersize=14, transform=ax.get_xaxis_transform(), label=f"infeasible, not trained ({len(untrained)})")
    if budget is not None:
        ax.axvline(budget, color="black", linestyle="--", linewidth=1.2, label=f"budget {budget:g} ms")
    if not trained and not untrained:
        ax.set_ylim(0, 100)
        _empty(ax, "no trial with an accuracy and a latency yet")
    ax.grid(alpha=0.3)
    title = f"failed (not plotted): {failed}"
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title=title, title_fontsize=8)
    else:
        ax.text(0.99, 0.02, title, ha="right", transform=ax.transAxes, fontsize=8)
    ax.figure.savefig(path)


def plot_progress(info: RunInfo, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    ax = _axes(9.0, title=f"{info.name}: best feasible accuracy so far", xlabel="trial id",
               ylabel="validation accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    records = sorted(info.trials, key=lambda r: r.trial_id)
    trained = [r for r in records if r.result.accuracy is not None]
    for over, style in ((False, {"color": "#888888", "marker": "o", "label": "trained trial, feasible"}),
                        (True, {"color": "#d62728", "marker": "x", "label": "trained trial, over budget"})):
        chosen = [r for r in trained if r.feasible != over]
        if chosen:
            ax.scatter([r.trial_id for r in chosen], [100 * r.result.accuracy for r in chosen], s=18, zorder=2,
                       **style)
    xs, ys, best = [], [], None
    for record in records:
        accuracy = record.result.accuracy
        if accuracy is not None and record.feasible and (best is None or accuracy > best):
            best = accuracy
        if best is not None:
            xs.append(record.trial_id)
            ys.append(100 * best)
    if xs:
        ax.step(xs, ys, where="post", color="#1f77b4", linewidth=2, label="best feasible so far", zorder=3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        _empty(ax, "no feasible trained trial yet")
    ax.grid(alpha=0.3)
    ax.figure.savefig(path)


def _layer_op(name: str, arch: Any) -> str:
    if name in ("stem", "head"):
        return name
    return arch.blocks[int(name.split(".")[1])].op.value


def plot_layer_latency(info: RunInfo, path: Path) -> str:
    """The figure, and a line saying which architecture and table it shows (or why it is empty)."""
    from predictors.latency import LatencyTableError, MissingEntriesError
    from predictors.latency.predictor import load_latency_predictor

    ax = _axes(8.5, title=f"{info.name}: per-layer latency of the best architecture (LUT)",
               xlabel="layer (b<i> = blocks.i)", ylabel="LUT latency (ms)")
    arch, origin = info.best_or_leader()
    lut = info.lut_path()
    caption = origin
    try:
        layers = load_latency_predictor(lut).layer_latencies(arch) if arch is not None and lut is not None else None
    except (MissingEntriesError, LatencyTableError, FileNotFoundError) as error:
        layers, caption = None, f"{origin}; latency table unusable: {str(error).splitlines()[0]}"
    if layers:
        names = [name for name, _, _ in layers]
        ops = [_layer_op(name, arch) for name in names]
        values = [ms for _, _, ms in layers]
        ax.bar(range(len(names)), values, color=[OP_COLORS.get(op, "#333333") for op in ops])
        ax.set_xticks(range(len(names)), [n.replace("blocks.", "b") for n in names], rotation=60, fontsize=8)
        from matplotlib.patches import Patch

        shown = list(dict.fromkeys(ops))
        ax.legend([Patch(color=OP_COLORS.get(op, "#333333")) for op in shown], shown, title="op", fontsize=8)
        which = "best/" if info.best_arch is not None else f"{origin.split(' (')[0]}, best so far"
        ax.set_title(f"{info.name}: per-layer LUT latency of {which} (sum {sum(values):.3f} ms)")
        ax.grid(axis="y", alpha=0.3)
        caption = f"{origin}; {len(names)} layers, {sum(values):.3f} ms summed (uncalibrated)"
    else:
        reason = caption if arch is None else ("no latency table in config.json" if lut is None else caption)
        ax.set_xticks([])
        _empty(ax, f"nothing to show: {reason}")
        caption = reason
    ax.figure.savefig(path)
    return caption


def top_trials(info: RunInfo, limit: int = 10) -> list[TrialRecord]:
    """Trained trials, feasible first, by accuracy (then by lower latency)."""
    trained = [r for r in info.trials if r.result.accuracy is not None]
    trained.sort(key=lambda r: (not r.feasible, -r.result.accuracy,
                                r.result.latency_ms if r.result.latency_ms is not None else float("inf")))
    return trained[:limit]


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else html.escape(fmt.format(value))


def _trial_rows(info: RunInfo) -> str:
    rows = []
    for record in top_trials(info):
        result = record.result
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in (
            _cell(record.trial_id), _cell(result.status), "yes" if record.feasible else "no",
            _cell(100 * result.accuracy, "{:.2f}"),
            _cell(result.latency_ms, "{:.4f}"), _cell(record.reward, "{:.4f}"),
            _cell(result.params, "{:,}"), _cell(result.macs, "{:,}"),
            f"<code>{html.escape(' '.join(record.arch.block_strings()))}</code>",
        )) + "</tr>")
    return "\n".join(rows) or '<tr><td colspan="9">no trained trial yet</td></tr>'


def _index_html(info: RunInfo, figures: list[Path], layer_caption: str) -> str:
    counts = {status: info.count([status]) for status in ("ok", "infeasible", "failed")}
    budget = info.budget_ms
    done = info.planned_trials is not None and len(info.trials) >= info.planned_trials
    state = "search finished" if done else "in progress, or stopped early (`nas search --resume` continues it)"
    summary = [
        ("strategy", info.strategy), ("space", info.space), ("dataset", info.dataset),
        ("latency budget", f"{budget:g} ms" if budget is not None else None),
        ("trials", (f"{len(info.trials)} finished of {info.planned_trials or '?'}: {counts['ok']} ok, "
                    f"{counts['infeasible']} infeasible, {counts['failed']} failed")),
        ("state", state), ("best", info.best_or_leader()[1]),
    ]
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in dict.fromkeys(info.notes))
    captions = {"accuracy_latency.png": "Accuracy vs LUT-predicted latency, Pareto front and budget.",
                "progress.png": "Best feasible accuracy so far, by trial id.",
                "layer_latency.png": f"Per-layer LUT latency: {layer_caption}."}
    images = "\n".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
        f"<figcaption>{html.escape(captions.get(p.name, p.name))}</figcaption></figure>" for p in figures)
    header = "".join(f"<th>{h}</th>" for h in ("trial", "status", "feasible", "accuracy (%)", "latency (ms)",
                                                "reward", "params", "MACs", "blocks"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Report: {html.escape(info.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 6px;font-size:0.9em}}
figure{{margin:1.5em 0}} code{{font-size:0.85em}}</style></head>
<body><h1>Search report: {html.escape(info.name)}</h1>
<p>Generated {datetime.now(UTC).isoformat(timespec="seconds")} from <code>{html.escape(str(info.path))}</code>.</p>
<table>{"".join(f"<tr><th>{k}</th><td>{_cell(v)}</td></tr>" for k, v in summary)}</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Figures</h2>
{images}
<h2>Top trials</h2>
<table><tr>{header}</tr>
{_trial_rows(info)}
</table></body></html>
"""


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> ReportFiles:
    """Render the figures and index.html into `out` (default run_dir/report/)."""
    info = read_run(run_dir)
    directory = Path(out) if out is not None else info.path / "report"
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in FIGURES]
    plot_accuracy_latency(info, paths[0])
    plot_progress(info, paths[1])
    caption = plot_layer_latency(info, paths[2])
    index = directory / "index.html"
    index.write_text(_index_html(info, paths, caption))
    logger.info("wrote %s and %d figures", index, len(paths))
    return ReportFiles(directory, index, paths)
