"""The pieces of HAQ's search that its budgets share (``compress.haq`` runs the agent over them;
``compress.haq_latency`` adds the latency budget): the configuration, the action <-> bits
mapping, the budget cut (HAQ, Wang et al., CVPR 2019, Sec. 3.3) and the problem an episode
decides over. See ``compress.haq``'s docstring for the method."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from compress.quantize import apply_policy, calibrate
from compress.quantize_cost import bitfusion_cost, layer_infos, policy_weight_bits
from compress.quantize_policy import QuantPolicy
from search_spaces.errors import OptionError

__all__ = ["HaqConfig", "QuantProblem", "cut_to_budget"]

@dataclass(frozen=True)
class HaqConfig:
    min_bits: int = 2
    max_bits: int = 8
    warmup_episodes: int | None = None  # None: min(20, episodes // 4), HAQ uses 20
    hidden: int = 64  # HAQ/AMC use 300; 64 suffices for tens of layers and keeps updates fast
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch_size: int = 64
    buffer_size: int = 2000
    noise_initial: float = 0.5
    noise_decay: float = 0.99
    reward_scale: float = 0.1
    baseline_momentum: float = 0.5  # AMC's moving_alpha
    fixed_activation_bits: int = 8  # activations when they are not searched
    keep_first_last: bool = True  # first and last layers at max_bits (the authors' code)

    def __post_init__(self) -> None:
        if not (isinstance(self.min_bits, int) and isinstance(self.max_bits, int) and 2 <= self.min_bits <= self.max_bits <= 8):
            raise OptionError(f"HaqConfig: min_bits={self.min_bits!r}, max_bits={self.max_bits!r}; need 2 <= min <= max <= 8")
        if not 2 <= self.fixed_activation_bits <= 8:
            raise OptionError(f"HaqConfig.fixed_activation_bits={self.fixed_activation_bits!r} not in 2..8")


def _action_to_bits(action: float, config: HaqConfig) -> int:
    span = config.max_bits - config.min_bits + 1
    return int(np.clip(round(config.min_bits - 0.5 + action * span), config.min_bits, config.max_bits))


def _bits_to_action(bits: int, config: HaqConfig) -> float:
    return (bits - config.min_bits + 0.5) / (config.max_bits - config.min_bits + 1)


def cut_to_budget(bits: list[int], cost: Callable[[list[int]], float], budget: float, cuttable: Sequence[int],
                  min_bits: int) -> list[int]:
    """HAQ's action wall: lower ``bits[i]`` by one for i in ``cuttable`` from the last to the first,
    starting over, until ``cost(bits) <= budget``; modifies and returns ``bits``."""
    while cost(bits) > budget:
        lowered = False
        for i in reversed(cuttable):
            if bits[i] > min_bits:
                bits[i], lowered = bits[i] - 1, True
                if cost(bits) <= budget:
                    return bits
        if not lowered:
            raise RuntimeError(f"cut_to_budget: cost {cost(bits):g} > budget {budget:g} with every cuttable "
                               f"step at min_bits={min_bits}")
    return bits


class QuantProblem:
    """What one search decides over: the layers of the (folded) model, the steps of an episode,
    which steps are pinned or may be cut, and the budget a policy's resource must meet. Each
    policy's accuracy is evaluated once."""

    def __init__(self, base: nn.Module, batches: list, config: HaqConfig, search_activations: bool,
                 budget: float, by_cost: bool) -> None:
        first = batches[0][0] if isinstance(batches[0], (tuple, list)) else batches[0]
        self.base, self.batches, self.config, self.budget, self.by_cost = base, batches, config, budget, by_cost
        self.search_activations = search_activations
        self.infos = layer_infos(base, tuple(first.shape))
        self.names = [info.name for info in self.infos]
        self.per_layer = 2 if search_activations else 1
        self.steps = len(self.names) * self.per_layer
        self.pinned: set[int] = set()
        if config.keep_first_last and len(self.names) > 1:
            self.pinned = {*range(self.per_layer), *range(self.steps - self.per_layer, self.steps)}
        # a size budget only responds to weight steps; lowering activations there would cost accuracy for nothing
        self.cuttable = [i for i in range(self.steps)
                         if i not in self.pinned and (by_cost or i % self.per_layer == 0)]
        self.cache: dict[QuantPolicy, float] = {}
        self.budget_kind = "bitfusion_cycles" if by_cost else "weight_bits"
        self.cost_source = "simulated (BitFusion-like accelerator model)" if by_cost else "exact (model size)"

    def to_bits(self, action: float) -> int:
        return _action_to_bits(action, self.config)

    def to_action(self, bits: int) -> float:
        return _bits_to_action(bits, self.config)

    def policy_of(self, bits: list[int]) -> QuantPolicy:
        if self.search_activations:
            return QuantPolicy({n: (bits[2 * i], bits[2 * i + 1]) for i, n in enumerate(self.names)})
        return QuantPolicy({n: (bits[i], self.config.fixed_activation_bits) for i, n in enumerate(self.names)})

    def resource(self, policy: QuantPolicy) -> float:
        if not self.by_cost:
            return float(policy_weight_bits(self.base, policy))
        return bitfusion_cost(self.infos, policy).cycles

    def allowed(self, bits: list[int]) -> list[int]:
        return [self.config.max_bits if i in self.pinned else b for i, b in enumerate(bits)]

    def check_reachable(self) -> None:
        config = self.config
        smallest = self.resource(self.policy_of(self.allowed([config.min_bits] * self.steps)))
        if smallest > self.budget:
            raise OptionError(f"search_quant_policy: budget {self.budget:g} is below the smallest reachable resource "
                              f"{smallest:g} (every searched bit-width at min_bits={config.min_bits}"
                              + (f", first and last layers at max_bits={config.max_bits})" if self.pinned else ")"))

    def fit(self, bits: list[int]) -> list[int]:
        return cut_to_budget(self.allowed(bits), lambda b: self.resource(self.policy_of(b)), self.budget,
                             self.cuttable, self.config.min_bits)

    def accuracy_of(self, policy: QuantPolicy, evaluate: Callable[[nn.Module], float]) -> float:
        if policy not in self.cache:
            qmodel = calibrate(apply_policy(self.base, policy, fold_batchnorm=False), self.batches).eval()
            value = float(evaluate(qmodel))
            if not math.isfinite(value):
                raise ValueError(f"evaluate() returned {value!r}; expected a finite accuracy")
            self.cache[policy] = value
        return self.cache[policy]
