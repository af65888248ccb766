"""CLI command groups, one module each; `nas.cli` registers them in this order."""

from nas.commands import device, lut, search, spaces, strategies, zoo

COMMAND_MODULES = [zoo, spaces, strategies, lut, device, search]

from nas.commands import export, report  # noqa: E402  (appended: keeps other groups' lines untouched)

COMMAND_MODULES += [export, report]

from nas.commands import compress  # noqa: E402

COMMAND_MODULES += [compress]

from nas.commands import proxies  # noqa: E402

COMMAND_MODULES += [proxies]
