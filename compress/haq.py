"""Mixed-precision policy search with HAQ's DDPG agent (Wang et al., CVPR 2019, Sec. 3).

Why DDPG and not the project's searchers: HAQ's search is *layer by layer* -- the agent decides
one layer's bits after seeing that layer's features and its previous decision -- which an
ask/tell searcher over a flat vector does not express; and the agent is small (two MLPs).

An **episode** walks the layers in execution order; with activations searched, each layer is two
steps (weights, then activations), as in the paper. The **state** of a step (Sec. 3.1) is
``(layer index, in channels, out channels, kernel, stride, input feature-map size, weight
params, is depthwise, is weight step, previous action)``; the first eight are min-max scaled to
[0, 1] over the network. The **action** ``a in [0, 1]`` maps to
``bits = round(min_bits - 0.5 + a * (max_bits - min_bits + 1))`` (clipped to the range).

**Constraint** (Sec. 3.3, `cut_to_budget`): when the proposed policy exceeds the budget,
bit-widths are decreased one step at a time, sweeping from the *last* layer towards the first and
starting over, until it fits (for a model size budget only weight bits are lowered; for the
accelerator cost both) -- the order of the authors' ``_final_action_wall`` (mit-han-lab/haq,
``lib/env/linear_quantize_env.py``), which takes the bits from the large late layers first. With
``keep_first_last`` (default, as their ``_keep_first_last_layer``) the first and last layers stay
at ``max_bits``: they hold few weights and are the most sensitive. A budget below the
smallest policy the rules allow raises at once. A third budget, ORT latency over {int8, fp32}
per layer, is ``compress.haq_latency``'s. **Reward**: ``0.1 * (accuracy - float accuracy)``
(``reward_scale``), where ``accuracy = evaluate(quantized model)`` -- the caller's callable, which
may fine-tune briefly first as HAQ does; the search calibrates activation ranges beforehand.

Agent: actor ``state -> a`` and critic ``(state, a) -> Q`` MLPs (``hidden`` units, two layers),
Adam (actor 1e-4, critic 1e-3, as HAQ/AMC), a replay buffer, ``warmup_episodes`` of uniform random
actions, then the actor's action plus truncated-normal noise (sigma 0.5, times ``noise_decay``
per episode). One simplification of AMC/HAQ's DDPG: every transition's target is its episode's
reward minus a moving-average baseline, without bootstrapping -- the reward arrives once per
episode and is shared by all its actions, so target networks would only add variance at our
episode counts. Transitions store the *executed* actions (after the budget cut, at the centre of
their bit's interval), so the critic learns what was evaluated. Everything random comes from
``seed`` (numpy Generator + a forked torch RNG); agent state is JSON-serialisable.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.haq_latency import LatencyProblem
from compress.haq_problem import HaqConfig, QuantProblem, cut_to_budget
from compress.quantize import fold_conv_batchnorm
from compress.quantize_cost import LayerInfo
from compress.quantize_policy import QuantPolicy
from search_spaces.errors import OptionError

__all__ = ["HaqAgent", "HaqConfig", "cut_to_budget", "search_quant_policy", "state_features"]

logger = logging.getLogger(__name__)

STATE_DIM = 10



def state_features(infos: Sequence[LayerInfo], search_activations: bool) -> np.ndarray:
    """Static part of each step's state (the previous action, column 9, is filled in while acting)."""
    rows = []
    for index, info in enumerate(infos):
        base = [index, info.in_channels, info.out_channels, info.kernel, info.stride, info.in_size,
                info.weight_params, float(info.depthwise)]
        rows.append(base + [1.0, 0.0])
        if search_activations:
            rows.append(base + [0.0, 0.0])
    features = np.asarray(rows, dtype=np.float64)
    low, high = features[:, :8].min(0), features[:, :8].max(0)
    span = np.where(high > low, high - low, 1.0)
    features[:, :8] = (features[:, :8] - low) / span
    return features


def _mlp(inputs: int, hidden: int, final: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                               nn.Linear(hidden, 1)]
    return nn.Sequential(*layers, *([final] if final is not None else []))


def _to_json(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {"__dict__": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if isinstance(value, dict) and "__dict__" in value:
        return {_from_json(k): _from_json(v) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class HaqAgent:
    """The actor-critic of the module docstring; deterministic for a seed."""

    def __init__(self, config: HaqConfig, seed: int) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = _mlp(STATE_DIM, config.hidden, nn.Sigmoid())
            self.critic = _mlp(STATE_DIM + 1, config.hidden, None)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.buffer: list[tuple[list[float], float, float]] = []  # (state, action, baselined reward)
        self.baseline: float | None = None
        self.noise = config.noise_initial

    def act(self, state: np.ndarray, explore: str) -> float:
        """``explore``: "random" (warm-up), "noise" (actor + truncated normal) or "greedy"."""
        if explore == "random":
            return float(self.rng.uniform())
        with torch.no_grad():
            mean = float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])
        if explore == "greedy":
            return mean
        for _ in range(100):  # truncated normal on [0, 1] by rejection (mean is inside, so this ends fast)
            sample = self.rng.normal(mean, self.noise)
            if 0.0 <= sample <= 1.0:
                return float(sample)
        return float(np.clip(mean, 0.0, 1.0))

    def observe(self, states: np.ndarray, actions: Sequence[float], reward: float) -> float:
        """Store an episode's transitions with the baselined reward; returns that reward."""
        momentum = self.config.baseline_momentum
        self.baseline = reward if self.baseline is None else self.baseline + momentum * (reward - self.baseline)
        advantage = reward - self.baseline
        for state, action in zip(states, actions):
            self.buffer.append((state.tolist(), float(action), advantage))
        del self.buffer[: max(0, len(self.buffer) - self.config.buffer_size)]
        return advantage

    def update(self) -> tuple[float, float]:
        """One critic and one actor step on a minibatch; returns (critic loss, actor loss)."""
        size = min(self.config.batch_size, len(self.buffer))
        picks = self.rng.choice(len(self.buffer), size=size, replace=False)
        states = torch.tensor([self.buffer[i][0] for i in picks], dtype=torch.float32)
        actions = torch.tensor([[self.buffer[i][1]] for i in picks], dtype=torch.float32)
        rewards = torch.tensor([[self.buffer[i][2]] for i in picks], dtype=torch.float32)
        critic_loss = nn.functional.mse_loss(self.critic(torch.cat((states, actions), 1)), rewards)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        actor_loss = -self.critic(torch.cat((states, self.actor(states)), 1)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        return critic_loss.item(), actor_loss.item()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (JSON-serialisable)."""
        return {
            "config": asdict(self.config), "rng": self.rng.bit_generator.state, "noise": self.noise,
            "baseline": self.baseline, "buffer": [list(t) for t in self.buffer],
            **{name: _to_json(getattr(self, name).state_dict())
               for name in ("actor", "critic", "actor_optimizer", "critic_optimizer")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.noise, self.baseline = state["noise"], state["baseline"]
        self.buffer = [(list(s), float(a), float(r)) for s, a, r in state["buffer"]]
        for name in ("actor", "critic", "actor_optimizer", "critic_optimizer"):
            getattr(self, name).load_state_dict(_from_json(state[name]))



def _checked_budget(budgets: Sequence[float | None], episodes: int) -> float:
    """The one budget as a number, after checking the search's arguments."""
    if len(given := [b for b in budgets if b is not None]) != 1:
        raise OptionError("search_quant_policy: give exactly one of budget_weight_bits, budget_cost or "
                          "latency_budget_ms")
    budget = float(given[0])
    if not (math.isfinite(budget) and budget > 0):
        raise OptionError(f"search_quant_policy: budget={budget!r} must be a finite number > 0")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise OptionError(f"search_quant_policy: episodes={episodes!r} must be an int >= 1")
    return budget


def _run_episode(agent: HaqAgent, problem: QuantProblem, evaluate: Callable[[nn.Module], float],
                 features: np.ndarray, episode: int, warmup: int, float_accuracy: float) -> dict[str, Any]:
    """Act through every step, cut to the budget, evaluate, learn; the episode's history entry."""
    config = problem.config
    explore = "random" if episode < warmup else "noise"
    states, proposed, previous = features.copy(), [], 0.0
    for step in range(problem.steps):
        states[step, 9] = previous
        previous = agent.act(states[step], explore)
        proposed.append(previous)
    bits = problem.fit([problem.to_bits(a) for a in proposed])
    policy = problem.policy_of(bits)
    accuracy = problem.accuracy_of(policy, evaluate)
    executed = [problem.to_action(b) for b in bits]
    states[1:, 9] = executed[:-1]  # the state each executed action was (now) taken in
    reward = config.reward_scale * (accuracy - float_accuracy)
    advantage = agent.observe(states, executed, reward)
    losses = [agent.update() for _ in range(problem.steps)] if episode >= warmup else []
    if episode >= warmup:
        agent.noise *= config.noise_decay
    return {
        "episode": episode, "explore": explore, "bits": policy.bits_string(), "resource": problem.resource(policy),
        "accuracy": accuracy, "reward": reward, "advantage": advantage,
        "critic_loss": losses[-1][0] if losses else None, "policy": policy.to_dict()["layers"],
    }


def search_quant_policy(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    calibration: Iterable[Tensor],
    budget_weight_bits: int | None = None,
    budget_cost: float | None = None,
    episodes: int = 100,
    seed: int = 0,
    search_activations: bool | None = None,
    fold_batchnorm: bool = True,
    config: HaqConfig | None = None,
    latency_budget_ms: float | None = None,
    layer_cost: Callable[[int, str], float] | None = None,
) -> tuple[QuantPolicy, dict[str, Any]]:
    """HAQ's search under exactly one budget: ``budget_weight_bits`` (model size in bits,
    ``quantize_cost.policy_weight_bits``) or ``budget_cost`` (BitFusion-like cycles,
    ``quantize_cost.bitfusion_cost``). ``evaluate(qmodel) -> accuracy`` (higher is better) gets a
    calibrated quantized copy in eval mode; ``calibration`` is a few input batches (tensors or
    (input, label) pairs). ``search_activations`` defaults to True for a cost budget and False
    for a size budget (activations do not count toward model size; they are kept at
    ``config.fixed_activation_bits``). Returns the best policy found (highest accuracy; ties go to
    the smaller resource) and a JSON-serialisable report of every episode.

    ``latency_budget_ms`` with ``layer_cost``: the latency mode of ``compress.haq_latency`` (int8
    or fp32 per layer, or per block with an int8-aware ``LatencyTable``; the policy names the
    int8 layers; ``report["budget"]["cost_source"]`` says the costs are predicted)."""
    config = config or HaqConfig()
    budget = _checked_budget((budget_weight_bits, budget_cost, latency_budget_ms), episodes)
    if (latency_budget_ms is None) != (layer_cost is None):
        raise OptionError("search_quant_policy: latency_budget_ms and layer_cost go together")
    search_activations = budget_cost is not None if search_activations is None else search_activations
    batches = list(calibration)
    if not batches:
        raise OptionError("search_quant_policy: calibration is empty; give at least one input batch")
    base = copy.deepcopy(model).eval()
    if fold_batchnorm:
        fold_conv_batchnorm(base)
    search_activations = search_activations and layer_cost is None
    problem = (LatencyProblem(base, batches, config, budget, layer_cost) if layer_cost is not None else
               QuantProblem(base, batches, config, search_activations, budget, by_cost=budget_cost is not None))
    problem.check_reachable()
    float_accuracy = float(evaluate(copy.deepcopy(base)))
    agent = HaqAgent(config, seed)
    features = state_features(problem.infos, search_activations)
    warmup = config.warmup_episodes if config.warmup_episodes is not None else min(20, episodes // 4)
    history: list[dict[str, Any]] = []
    for episode in range(episodes):
        history.append(_run_episode(agent, problem, evaluate, features, episode, warmup, float_accuracy))
        logger.info("HAQ episode %d/%d (%s): accuracy %.4f, resource %.4g / %.4g", episode + 1, episodes,
                    history[-1]["explore"], history[-1]["accuracy"], history[-1]["resource"], budget)
    best = max(history, key=lambda h: (h["accuracy"], -h["resource"], -h["episode"]))
    report = {
        "budget": {"kind": problem.budget_kind, "value": budget, "cost_source": problem.cost_source},
        "float_accuracy": float_accuracy, "search_activations": search_activations, "seed": seed,
        "config": asdict(config), "layers": [info.to_dict() for info in problem.infos], "best_episode": best["episode"],
        "best": {k: best[k] for k in ("accuracy", "resource", "bits")}, "episodes": history,
    }
    return QuantPolicy(best["policy"]), report
