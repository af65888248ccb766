"""CLI command groups, one module each; `nas.cli` registers them in this order. The modules in
`COMPRESS_COMMANDS` add their command to `nas compress` when imported, those in `SUPERNET_COMMANDS`
theirs to `nas supernet`."""

from nas.commands import compress, device, export, latency, load, lut, proxies, report, search, spaces, strategies, zoo
from nas.commands import supernet, supernet_specialize
from nas.commands import compress_deep, compress_lottery, compress_lowrank, compress_slim

COMMAND_MODULES = [zoo, spaces, strategies, lut, device, search, supernet, export, report, compress, load, latency, proxies]
COMPRESS_COMMANDS = [compress_deep, compress_lowrank, compress_lottery, compress_slim]
SUPERNET_COMMANDS = [supernet_specialize]
