"""CLI command groups, one module each; `nas.cli` registers them in this order."""

from nas.commands import device, lut, spaces, zoo

COMMAND_MODULES = [zoo, spaces, lut, device]
