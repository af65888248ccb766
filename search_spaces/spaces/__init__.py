"""The built-in search spaces. Importing this package registers them in `SPACES` (each module
registers its class with a decorator; they are imported here explicitly, by name)."""

from search_spaces.space import SPACES, Decision, SearchSpace, get_space
from search_spaces.spaces import mnasnet, nb201, proxyless
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
