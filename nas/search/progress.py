"""Live progress of a search (rich): trials done / total, the best accuracy under the budget so
far and its latency, elapsed time, and time left estimated from this session's mean trial time."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from nas.search.session import SearchSession

__all__ = ["SearchProgress", "format_duration"]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class SearchProgress:
    """Subscribes to a session; a no-op when disabled (tests, logs-only runs)."""

    def __init__(self, session: SearchSession, *, enabled: bool = True) -> None:
        self.session = session
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]search[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("left {task.fields[left]}"),
            disable=not enabled,
        )
        self.task = None

    def __enter__(self) -> SearchProgress:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("search", total=self.session.trials, completed=self.session.finished,
                                               best=self._best(), left="?")
            self.session.listeners.append(self.update)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.enabled:
            self.session.listeners.remove(self.update)
            self.progress.stop()

    def _best(self) -> str:
        best = self.session.best
        if best is None:
            return "best: none under budget yet"
        return f"best acc {best.result.accuracy:.3f} @ {best.result.latency_ms:.2f} ms (trial {best.trial_id})"

    def update(self, session: SearchSession) -> None:
        if self.task is None:
            return
        mean = session.mean_trial_s()
        # wall time per finished trial: with trials in parallel (Ray) it already counts the overlap
        left = None if mean is None else mean * session.remaining
        self.progress.update(self.task, completed=session.finished, best=self._best(),
                             left=format_duration(left))
