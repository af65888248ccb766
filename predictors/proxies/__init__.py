"""Zero-cost proxies: scores of an untrained network from one mini-batch (or none), which rank
architectures without training them. One proxy per module, each registered in `PROXIES` by the
name NAS-Bench-Suite-Zero uses (`synflow`, `jacov`, `nwot`, `snip`, `grad_norm`, `fisher`, `zen`,
`params`, `macs`); `score_model` runs several on one model, each on its own copy, seeded and timed.
"""

from predictors.proxies import fisher, grad_norm, jacov, nwot, size, snip, synflow, zen  # noqa: F401  (registers)
from predictors.proxies.base import ALIASES, PROXIES, Proxy, ProxyBatch, get_proxy, parse_proxy_names
from predictors.proxies.scoring import BATCH_SIZE, INITS, ProxyScore, reinitialise, sample_batch, score_model, shape_batch

__all__ = ["ALIASES", "BATCH_SIZE", "INITS", "PROXIES", "Proxy", "ProxyBatch", "ProxyScore", "get_proxy",
           "parse_proxy_names", "reinitialise", "sample_batch", "score_model", "shape_batch"]
