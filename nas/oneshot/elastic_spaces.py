"""The spaces an elastic supernet covers: `adapter_for(space)`, by class, so that subclasses (a
reduced proxyless space in tests) are covered too."""

from __future__ import annotations

from nas.oneshot.elastic_fbnet import FBNetAdapter
from nas.oneshot.elastic_mnasnet import MnasNetAdapter
from nas.oneshot.elastic_plan import ElasticAdapter
from nas.oneshot.elastic_proxyless import ProxylessAdapter
from search_spaces.space import SearchSpace
from search_spaces.spaces.fbnet import FBNetSpace
from search_spaces.spaces.mnasnet import MnasNetSpace
from search_spaces.spaces.proxyless import ProxylessSpace
from search_spaces.supernet_plan import SupernetPlanError

__all__ = ["COVERED_SPACES", "adapter_for"]

ADAPTERS: tuple[tuple[type[SearchSpace], type[ElasticAdapter]], ...] = ((ProxylessSpace, ProxylessAdapter),
                                                                        (FBNetSpace, FBNetAdapter),
                                                                        (MnasNetSpace, MnasNetAdapter))
COVERED_SPACES = ("proxyless", "fbnet", "mnasnet")


def adapter_for(space: SearchSpace) -> ElasticAdapter:
    for space_class, adapter in ADAPTERS:
        if isinstance(space, space_class):
            return adapter(space)
    raise SupernetPlanError(f"elastic supernet: space={space.name!r} is not covered; "
                            f"covered spaces: {', '.join(COVERED_SPACES)}")
