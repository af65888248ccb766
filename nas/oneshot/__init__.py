"""One-shot strategies: a supernet trained once, then the network derived from it.

Importing this package registers them in `nas.strategies.SEARCHERS` (`proxyless`, `once-for-all`)."""

from nas.oneshot.ofa_strategy import OnceForAllSearcher
from nas.oneshot.proxyless_strategy import ProxylessSearcher

__all__ = ["OnceForAllSearcher", "ProxylessSearcher"]
