"""The built-in search spaces and the registry of spaces by name: `SPACES`, `get_space`.

The registry lives here, not in `space.py`, so that the base class knows nothing of its
subclasses: the space modules import `space.py`, and this package imports them and registers
each by its `name`.
"""

from __future__ import annotations

import inspect
from typing import Any

from search_spaces.errors import OptionError
from search_spaces.registry import Registry
from search_spaces.space import Decision, SearchSpace
from search_spaces.spaces import fbnet, mnasnet, nb201, proxyless
from search_spaces.spaces.mnasnet import MnasNetSpace
from search_spaces.spaces.nb201 import NB201Space
from search_spaces.spaces.proxyless import ProxylessSpace

__all__ = [
    "SPACES",
    "Decision",
    "MnasNetSpace",
    "NB201Space",
    "ProxylessSpace",
    "SearchSpace",
    "get_space",
    "mnasnet",
    "nb201",
    "proxyless",
]


SPACES: Registry[type[SearchSpace]] = Registry("search space")


def get_space(name: str, resolution: int = 224, num_classes: int = 1000, **options: Any) -> SearchSpace:
    space_class = SPACES.get(name)
    _check_options(name, space_class, options)
    space = space_class(resolution=resolution, num_classes=num_classes, **options)
    space.options = dict(options)  # so a table built for a restricted space can rebuild that space
    return space


def _check_options(name: str, space_class: type[SearchSpace], options: dict[str, Any]) -> None:
    """Space options (`--space-options`, a table's `space_options`) must be keyword arguments of
    the space; say which are allowed instead of Python's "unexpected keyword argument"."""
    parameters = inspect.signature(space_class).parameters
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    allowed = [key for key, parameter in parameters.items() if key not in ("resolution", "num_classes")
               and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise OptionError(f"space option(s) {unknown} unknown to search space {name!r}; allowed: {allowed}")


for _space_class in (MnasNetSpace, NB201Space, ProxylessSpace):
    SPACES.add(_space_class.name, _space_class)
SPACES.add(fbnet.FBNetSpace.name, fbnet.FBNetSpace)
