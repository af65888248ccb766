"""Helpers shared by the CLI commands: turning user errors into one clear line (and nothing
else: a bug keeps its traceback), reading ARCH arguments, choosing where latency is measured."""

from __future__ import annotations

import errno
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from search_spaces.errors import InputFileError, OptionError, UserError

F = TypeVar("F", bound=Callable[..., Any])
error_console = Console(stderr=True)


def one_line(message: str) -> str:
    """`message` on one line: its lines stripped and joined ("; " between sentences, a space after
    a colon), so a listing such as a table's missing layers stays readable after `error:`."""
    text = ""
    for line in filter(None, (part.strip() for part in message.splitlines())):
        if text:
            text += " " if text.endswith((":", ";", ",")) else "; "
        text += line
    return text


# what the machine, not our code, refused: a full disk, a read-only or foreign directory
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def fail_on_user_error(command: F) -> F:
    """A `UserError` (bad input: spec, table, policy, run directory, dataset, option, file, device)
    ends the command with `error: <message>` on one line of stderr and exit code 2; so does an
    `OSError` of `REFUSED_WRITES` (disk full, read-only, no permission), naming the path. Anything
    else is a bug: it propagates, so `nas` shows its traceback and exits 1."""

    def fail(message: str) -> typer.Exit:
        typer.echo(f"{typer.style('error:', fg='red', bold=True)} {message}", err=True)
        return typer.Exit(2)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            raise fail(one_line(str(error)) or type(error).__name__) from None
        except OSError as error:
            if error.errno not in REFUSED_WRITES:
                raise
            where = f"{error.filename}: " if error.filename else ""
            # every run file and table is replaced by an atomic rename, so what was there is intact
            raise fail(f"{where}{error.strerror or error} (files written before are intact; free space or fix "
                       "the directory's permissions, then run again or --resume)") from None

    return wrapper  # type: ignore[return-value]


def load_arch(argument: str, resolution: int | None = None, num_classes: int | None = None):
    """ARCH on the command line: `zoo:NAME` or a spec JSON file."""
    from search_spaces import zoo
    from search_spaces.spec import ArchSpec, SpecError

    if argument.startswith("zoo:"):
        options = {key: value for key, value in (("resolution", resolution), ("num_classes", num_classes)) if value}
        return zoo.get(argument[4:], **options)
    path = Path(argument)
    if not path.is_file():
        raise InputFileError(f"ARCH {argument!r} is neither zoo:NAME ({', '.join(zoo.names())}) nor a spec file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid JSON ({error})") from None
    from predictors.size_limits import check_size

    try:
        spec = ArchSpec.from_dict(data.get("arch", data) if isinstance(data, dict) else data)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None
    check_size(spec, source=str(path))
    return spec


def make_measurer(backend: str, threads: int, device: str | None = None, token: str | None = None):
    """A device agent when a URL is given, else a backend on this machine."""
    if device:
        from predictors.latency.remote import RemoteMeasurer

        if not token:
            raise OptionError("--token (or NAS_DEVICE_TOKEN) is required with --device")
        return RemoteMeasurer(device, token)
    from predictors.latency.builder import LocalMeasurer

    return LocalMeasurer(backend, threads=threads)
