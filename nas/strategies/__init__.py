"""Search strategies behind one ask/tell interface, registered by name in `SEARCHERS`.

`random`, `evolution` (regularized evolution), `mnas-rl` (MnasNet's LSTM controller), `tpe` and
`nsga2` (Optuna samplers), `local` (local search around the incumbent), `bananas` (an MLP-ensemble
predictor with Thompson sampling or expected improvement) `proxy-warm` (the top of many
candidates ranked by a cheap score first, then evolution or local search) and `band-screen`
(proxy-warm over the latency band just under the budget); `successive-halving` runs any of them
multi-fidelity (cheap short trainings first, the best trained in full). Importing this package
registers them; nothing runs at import.
"""

from nas.strategies.band_screen import BandScreenSearcher
from nas.strategies.bananas import BananasSearcher
from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, SearchObjective
from nas.strategies.evolution import EvolutionSearcher
from nas.strategies.local_search import LocalSearcher
from nas.strategies.mnas_rl import MnasRLSearcher
from nas.strategies.optuna_search import NSGA2Searcher, OptunaSearcher, TPESearcher
from nas.strategies.proxy_warm import ProxyWarmSearcher
from nas.strategies.random_search import RandomSearcher
from nas.strategies.successive_halving import SuccessiveHalvingSearcher

__all__ = ["SEARCHERS", "BananasSearcher", "BandScreenSearcher", "Candidate", "EvolutionSearcher", "LocalSearcher", "MnasRLSearcher",
           "NSGA2Searcher", "OptunaSearcher", "ProxyWarmSearcher", "RandomSearcher", "Result", "SearchObjective",
           "Searcher", "SuccessiveHalvingSearcher", "TPESearcher"]
