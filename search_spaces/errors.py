"""`UserError`: the root of every error that means "the input is wrong", not "our code is wrong".

Each package raises a subclass where it checks what a user handed it (a spec, a table, a policy,
a run directory, a dataset, an option, a file). The CLI catches `UserError` alone: it prints the
message on one line and exits 2. Anything else is a bug and keeps its traceback (exit 1). It
lives in the lowest package so that every package can raise it without importing upwards.

The subclasses keep a builtin as a second base (`ValueError`, `KeyError`, `FileNotFoundError`,
`RuntimeError`), so library callers that catch the builtin keep working.

The family (the first six are defined next to the code that reads what they are about)::

    UserError
      SpecError             search_spaces.spec          an architecture / block spec or spec file
      SupernetPlanError     search_spaces.supernet_plan a space (or its options) without a supernet plan
      LatencyTableError     predictors.latency.lut      a latency table file
        MissingEntriesError                             ... lacks layers of an architecture
      PolicyError           compress.policy             a compression policy
      RunDirError           nas.rundir.files            a run directory
      WeightsError          nas.rundir.model_files      a weights file (ArchMismatchError: of another arch)
      OptionError           here                        an option / argument value outside what it allows
        UnknownNameError                                ... a name that is not registered (space, backend, zoo model)
      DatasetError          here                        a dataset name or path
      InputFileError        here                        a file or directory named by the user does not exist
      DeviceError           here                        the device to measure on is unusable (agent refuses, no GPU)
"""

from __future__ import annotations

__all__ = ["DatasetError", "DeviceError", "InputFileError", "OptionError", "UnknownNameError", "UserError"]


class UserError(Exception):
    """Bad input; the message names the field and what is allowed."""

    def __str__(self) -> str:
        # the message itself, also for the KeyError-based kinds (KeyError would repr() it)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class OptionError(UserError, ValueError):
    """A command-line option or configuration field has a value outside what it allows."""


class UnknownNameError(OptionError, KeyError):
    """A name that is not registered (a search space, latency backend, strategy, zoo model...);
    the message lists the known ones. A `KeyError` too, as a failed lookup always was."""


class DatasetError(UserError, ValueError):
    """A dataset name or path cannot be read as a dataset."""


class InputFileError(UserError, FileNotFoundError):
    """A file or directory the user named (an argument, an option, a path in a config) does not
    exist; the message says which and what was expected there."""


class DeviceError(UserError, RuntimeError):
    """The device chosen to measure on cannot be used: a device agent refuses the token or cannot
    be reached at the given URL, or a backend needs hardware this machine lacks (cuda without a GPU)."""
