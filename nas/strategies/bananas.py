"""`bananas`: predictor-guided search, after BANANAS (White, Neiswanger and Savani 2021, "BANANAS:
Bayesian Optimization with Neural Architectures for Neural Architecture Search", AAAI).

- The first `num_init` proposals are feasible random architectures.
- After that, each proposal trains an ensemble of `ensemble_size` small MLPs on every told
  (encoding, reward) pair, builds a candidate pool (one-decision mutations of the
  `num_parents` best told architectures, plus `random_candidates` random ones; feasible and never
  asked, only), and asks the candidate with the highest acquisition value: independent Thompson
  sampling (``its``, BANANAS' choice: one draw per candidate from a normal with the ensemble's
  mean and spread) or expected improvement over the best told reward (``ei``).

The encoding is one-hot per decision of the space's canonical vector (`space.encode`); no space
offers BANANAS' path encoding yet. The target is the MnasNet reward the run optimizes, which is
the accuracy for every network within the budget under the hard constraint (the pre-check keeps
proposals there), and lower for failed or over-budget ones.

The ensemble is a pure function of the told data and of when it was trained: its first weights
are drawn by a `torch.Generator` seeded from the seed; at each ask that follows new results it is
trained by full-batch Adam on the told pairs in the order told (`epochs` steps the first time,
then `update_epochs` steps continued from the previous weights: BANANAS retrains from scratch at
every step, which costs several times more per ask).
Several asks between two tells share one ensemble. The state holds the told data and the told
counts at which it was trained, so a resumed search replays the same trainings and continues
identically; the global RNGs are left alone.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from nas.strategies.random_search import draw_unseen, share_of_trials
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

ACQUISITIONS = ("its", "ei")
DEFAULT_INIT = 10  # BANANAS' default
MIN_INIT = 2


@dataclass(frozen=True)
class BananasOptions:
    num_init: int | None = None  # random trials first; None: 10, or a sixth of the budget (at least 2)
    ensemble_size: int = 5  # MLPs in the ensemble (BANANAS: 5)
    hidden: int = 32  # units per hidden layer
    layers: int = 2  # hidden layers
    epochs: int = 100  # full-batch Adam steps of the first training
    update_epochs: int = 20  # steps of each later training, continued from the previous weights
    lr: float = 0.01
    weight_decay: float = 1e-4
    acquisition: str = "its"  # its: independent Thompson sampling; ei: expected improvement
    num_parents: int = 5  # best told architectures whose mutations enter the pool
    mutations_per_parent: int = 8
    random_candidates: int = 10  # random feasible architectures in the pool

    def __post_init__(self) -> None:
        if self.num_init is not None and self.num_init < MIN_INIT:
            raise OptionError(f"num_init={self.num_init} must be >= {MIN_INIT} (the ensemble needs data to fit)")
        for name in ("ensemble_size", "hidden", "layers", "epochs", "update_epochs", "num_parents"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("mutations_per_parent", "random_candidates"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name}={getattr(self, name)} must be >= 0")
        if self.mutations_per_parent + self.random_candidates < 1:
            raise OptionError("mutations_per_parent + random_candidates must be >= 1 (the candidate pool)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise OptionError(f"lr={self.lr} must be a finite number > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise OptionError(f"weight_decay={self.weight_decay} must be a finite number >= 0")
        if self.acquisition not in ACQUISITIONS:
            raise OptionError(f"acquisition={self.acquisition!r} not in {{{', '.join(ACQUISITIONS)}}}")


class MLPEnsemble:
    """`members` independent MLPs (ReLU, `layers` hidden layers of `hidden` units) evaluated as one
    batched network: weights are (members, fan_in, fan_out) views into one flat parameter vector,
    which a hand-written Adam updates in a handful of tensor operations (an ensemble is trained
    on every ask, so the per-step overhead of `torch.optim` would dominate)."""

    def __init__(self, members: int, in_features: int, hidden: int, layers: int, generator: torch.Generator) -> None:
        sizes = [in_features] + [hidden] * layers + [1]
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        parts = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            weight, bias = (members, fan_in, fan_out), (members, 1, fan_out)
            self.shapes.append((weight, bias))
            for shape in (weight, bias):
                parts.append(((torch.rand(shape, generator=generator) * 2 - 1) * bound).flatten())
        self.theta = torch.cat(parts).requires_grad_()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(n, features) -> (members, n) predictions."""
        h = x.unsqueeze(0).expand(self.shapes[0][0][0], -1, -1)
        offset = 0
        for index, (weight_shape, bias_shape) in enumerate(self.shapes):
            weight_size, bias_size = math.prod(weight_shape), math.prod(bias_shape)
            weight = self.theta[offset:offset + weight_size].view(weight_shape)
            bias = self.theta[offset + weight_size:offset + weight_size + bias_size].view(bias_shape)
            offset += weight_size + bias_size
            h = torch.baddbmm(bias, h, weight)
            if index < len(self.shapes) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    def fit(self, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, weight_decay: float,
            betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        """Full-batch Adam (torch.optim.Adam's update, L2 weight decay) on each member's MSE."""
        first, second = torch.zeros_like(self.theta), torch.zeros_like(self.theta)
        beta1, beta2 = betas
        for step in range(1, epochs + 1):
            self.theta.grad = None
            loss = ((self(x) - y) ** 2).mean(dim=1).sum()
            loss.backward()
            with torch.no_grad():
                grad = self.theta.grad.add(self.theta, alpha=weight_decay) if weight_decay else self.theta.grad
                first.mul_(beta1).add_(grad, alpha=1 - beta1)
                second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (second / (1 - beta2**step)).sqrt_().add_(eps)
                self.theta.addcdiv_(first, denominator, value=-lr / (1 - beta1**step))

    def predict(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self(x).double().numpy()


@SEARCHERS.register("bananas")
class BananasSearcher(Searcher):
    """BANANAS: an MLP-ensemble predictor of the reward picks, by Thompson sampling or expected
    improvement, among mutations of the best architectures and random ones."""

    name = "bananas"

    Options = BananasOptions

    def __init__(self, context: StrategyContext, options: BananasOptions | None = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        self.num_init = self.options.num_init or share_of_trials(context.trials, DEFAULT_INIT, 6, MIN_INIT)
        self.seen: set[str] = set()
        self.told: list[tuple[list[int], float]] = []  # (canonical vector, reward), in the order told
        self.offsets = np.concatenate([[0], np.cumsum(self.space.cardinalities)[:-1]]).astype(int)
        self.features = int(sum(self.space.cardinalities))
        # The ensemble is trained at an ask when results arrived since the last training: on the
        # first `fits[0]` told pairs for `epochs` steps, then, continued from those weights, on the
        # first `fits[i]` for `update_epochs` steps. `fits` is in the state; the weights are not:
        # a resumed searcher replays the same trainings on the same data (`_trained` of them done).
        self.fits: list[int] = []
        self._model: MLPEnsemble | None = None
        self._trained = 0

    # -- the predictor -----------------------------------------------------------------------------
    def encode(self, vectors: list[list[int]]) -> torch.Tensor:
        """Canonical vectors -> one-hot rows (one block of columns per decision)."""
        x = np.zeros((len(vectors), self.features), dtype=np.float32)
        if vectors:
            x[np.arange(len(vectors))[:, None], self.offsets[None, :] + np.asarray(vectors, dtype=int)] = 1.0
        return torch.from_numpy(x)

    def ensemble(self) -> tuple[MLPEnsemble, float, float]:
        """The ensemble trained on everything told so far, and the reward scale it predicts in."""
        if not self.fits or self.fits[-1] != len(self.told):
            self.fits.append(len(self.told))
        options = self.options
        if self._model is None:
            generator = torch.Generator().manual_seed(self.seed % 2**63)
            self._model = MLPEnsemble(options.ensemble_size, self.features, options.hidden, options.layers, generator)
            self._trained = 0
        while self._trained < len(self.fits):
            count = self.fits[self._trained]
            mean, std = self.reward_scale(count)
            y = torch.tensor([(reward - mean) / std for _, reward in self.told[:count]], dtype=torch.float32)
            epochs = options.epochs if self._trained == 0 else options.update_epochs
            self._model.fit(self.encode([vector for vector, _ in self.told[:count]]), y, epochs, options.lr,
                            options.weight_decay)
            self._trained += 1
        return (self._model, *self.reward_scale(self.fits[-1]))

    def reward_scale(self, count: int) -> tuple[float, float]:
        """Mean and spread of the first `count` told rewards (the ensemble learns standardized ones)."""
        rewards = np.array([reward for _, reward in self.told[:count]])
        std = float(rewards.std())
        return float(rewards.mean()), (std if std > 1e-12 else 1.0)

    def acquisition(self, vectors: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Acquisition value, predicted mean and spread (reward units) of each candidate."""
        model, mean, std = self.ensemble()
        predictions = model.predict(self.encode(vectors)) * std + mean  # (members, candidates)
        mu, sigma = predictions.mean(axis=0), predictions.std(axis=0) + 1e-9
        if self.options.acquisition == "its":
            value = mu + sigma * self.rng.standard_normal(len(vectors))
        else:
            best = max(reward for _, reward in self.told)
            u = (mu - best) / sigma
            cdf = 0.5 * (1.0 + np.vectorize(math.erf)(u / math.sqrt(2.0)))
            pdf = np.exp(-0.5 * u**2) / math.sqrt(2.0 * math.pi)
            value = (mu - best) * cdf + sigma * pdf
        return value, mu, sigma

    # -- proposing ---------------------------------------------------------------------------------
    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        if self.next_trial_id < self.num_init or len(self.told) < MIN_INIT:
            arch, _ = draw_unseen(self, self.seen)
            self.seen.add(arch.content_hash())
            return arch, {"origin": "random"}
        pool = self.candidate_pool()
        if not pool:
            logger.info("bananas: no unasked feasible candidate in the pool; sampling at random")
            arch, _ = draw_unseen(self, self.seen)
            self.seen.add(arch.content_hash())
            return arch, {"origin": "random"}
        vectors = [vector for vector, _, _ in pool]
        value, mu, sigma = self.acquisition(vectors)
        pick = int(np.argmax(value))  # ties: the first candidate
        vector, arch, origin = pool[pick]
        self.seen.add(arch.content_hash())
        return arch, {"origin": origin, "predicted": float(mu[pick]), "spread": float(sigma[pick]),
                      "pool": len(pool)}

    def candidate_pool(self) -> list[tuple[list[int], ArchSpec, str]]:
        """Mutations of the best told architectures, then random ones: feasible, never asked,
        each network once; (canonical vector, arch, origin) in the order made."""
        pool: list[tuple[list[int], ArchSpec, str]] = []
        in_pool: set[str] = set()

        def add(arch: ArchSpec, origin: str) -> None:
            key = arch.content_hash()
            if key not in self.seen and key not in in_pool and self.is_feasible(arch):
                in_pool.add(key)
                pool.append(([int(v) for v in self.space.encode(arch)], arch, origin))

        ranked = sorted(range(len(self.told)), key=lambda index: -self.told[index][1])  # stable: ties by age
        for index in ranked[: self.options.num_parents]:
            parent = self.space.decode(self.told[index][0])
            for _ in range(self.options.mutations_per_parent):
                add(self.space.mutate(parent, self.rng), "mutation")
        for _ in range(self.options.random_candidates):
            add(self.sample_feasible(), "random-candidate")
        return pool

    # -- learning ----------------------------------------------------------------------------------
    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        self.told.append(([int(v) for v in self.space.encode(candidate.arch)], float(reward)))

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "num_init": self.num_init, "seen": sorted(self.seen),
                "told": [{"vector": vector, "reward": reward} for vector, reward in self.told],
                "fits": list(self.fits)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.num_init = int(state["num_init"])
        self.seen = set(state["seen"])
        self.told = [([int(v) for v in item["vector"]], float(item["reward"])) for item in state["told"]]
        self.fits = [int(count) for count in state["fits"]]
        self._model = None  # the next ask replays the trainings in `fits`: the same ensemble
