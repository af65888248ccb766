"""CLI command groups, one module each; `nas.cli` registers them in this order."""

from nas.commands import spaces, zoo

COMMAND_MODULES = [zoo, spaces]
