"""Helpers shared by the CLI commands: turning user errors into one clear line, reading ARCH
arguments, choosing where latency is measured."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])
error_console = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from predictors.latency.lut import LatencyTableError, MissingEntriesError
    from search_spaces.spec import SpecError

    return (SpecError, LatencyTableError, MissingEntriesError, FileNotFoundError, ValueError, KeyError)


def fail_on_user_error(command: F) -> F:
    """Bad input ends the command with its message and exit code 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _user_errors() as error:
            message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
            error_console.print(f"[bold red]error:[/] {message}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def load_arch(argument: str, resolution: int | None = None, num_classes: int | None = None):
    """ARCH on the command line: `zoo:NAME` or a spec JSON file."""
    from search_spaces import zoo
    from search_spaces.spec import ArchSpec

    if argument.startswith("zoo:"):
        options = {key: value for key, value in (("resolution", resolution), ("num_classes", num_classes)) if value}
        return zoo.get(argument[4:], **options)
    path = Path(argument)
    if not path.is_file():
        raise FileNotFoundError(f"ARCH {argument!r} is neither zoo:NAME ({', '.join(zoo.names())}) nor a spec file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return ArchSpec.from_dict(data.get("arch", data) if isinstance(data, dict) else data)


def make_measurer(backend: str, threads: int, device: str | None = None, token: str | None = None):
    """A device agent when a URL is given, else a backend on this machine."""
    if device:
        from predictors.latency.remote import RemoteMeasurer

        if not token:
            raise ValueError("--token (or NAS_DEVICE_TOKEN) is required with --device")
        return RemoteMeasurer(device, token)
    from predictors.latency.builder import LocalMeasurer

    return LocalMeasurer(backend, threads=threads)
