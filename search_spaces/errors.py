"""`UserError`: the root of every error that means "the input is wrong", not "our code is wrong".

Each package raises a subclass where it checks what a user handed it (a spec, a table, a policy,
a run directory, a dataset, an option). The CLI catches `UserError` alone: it prints the one-line
message and exits 2. Anything else is a bug and keeps its traceback (exit 1). It lives in the
lowest package so that every package can raise it without importing upwards.

The subclasses keep `ValueError` (or `KeyError`) as a second base, so library callers that catch
the builtin keep working.
"""

from __future__ import annotations

__all__ = ["DatasetError", "OptionError", "UserError"]


class UserError(Exception):
    """Bad input; the message names the field and what is allowed."""


class OptionError(UserError, ValueError):
    """A command-line option or configuration field has a value outside what it allows."""


class DatasetError(UserError, ValueError):
    """A dataset name or path cannot be read as a dataset."""
