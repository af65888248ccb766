"""CLI command groups, one module each; `nas.cli` registers them in this order."""

from nas.commands import compress, device, export, latency, lut, proxies, report, search, spaces, strategies, zoo

COMMAND_MODULES = [zoo, spaces, strategies, lut, device, search, export, report, compress, latency, proxies]
