"""HAQ's policy search: the DDPG agent under a weight-size or BitFusion-cost budget, the budget
cut, and the agent's resumable state (tiny models of test_quantize.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_quantize import batches, tiny_model
from torch import nn

from compress.haq import HaqAgent, HaqConfig, cut_to_budget, search_quant_policy
from compress.quantize_cost import bitfusion_cost, layer_infos, policy_weight_bits
from compress.quantize_policy import uniform_policy


def _output_agreement(model: nn.Module):
    x = torch.cat(batches(2, seed=11))
    with torch.no_grad():
        reference = model(x)

    def evaluate(qmodel: nn.Module) -> float:  # deterministic stand-in for accuracy: closeness to float
        with torch.no_grad():
            return -float((qmodel(x) - reference).abs().mean())
    return evaluate


def test_search_meets_the_budget_and_is_deterministic() -> None:
    model = tiny_model()
    budget = 0.5 * policy_weight_bits(model, uniform_policy(model, 8))
    config = HaqConfig(warmup_episodes=2, batch_size=16)
    kwargs = {"calibration": batches(1), "budget_weight_bits": int(budget), "episodes": 5, "config": config}
    policy, report = search_quant_policy(model, _output_agreement(model), seed=3, **kwargs)
    again, report_again = search_quant_policy(model, _output_agreement(model), seed=3, **kwargs)
    assert policy_weight_bits(model, policy) <= budget
    assert all(episode["resource"] <= budget for episode in report["episodes"])
    assert policy == again and report["episodes"] == report_again["episodes"]
    assert {b.activation_bits for b in policy.layers.values()} == {8}  # size budget: weights only
    order = [info.name for info in layer_infos(model, (1, 3, 16, 16))]
    assert policy.layers[order[0]].weight_bits == policy.layers[order[-1]].weight_bits == 8  # keep_first_last
    json.dumps(report)
    assert report["episodes"][-1]["critic_loss"] is not None  # the agent trained after warm-up

    infos = layer_infos(model, (1, 3, 16, 16))
    cost_budget = 0.3 * bitfusion_cost(infos, uniform_policy(model, 8)).cycles
    unpinned = HaqConfig(warmup_episodes=2, batch_size=16, keep_first_last=False)  # 0.3x is below 8-bit ends
    policy, report = search_quant_policy(model, _output_agreement(model), calibration=batches(1),
                                         budget_cost=cost_budget, episodes=3, seed=0, config=unpinned)
    assert bitfusion_cost(infos, policy).cycles <= cost_budget
    assert {b.activation_bits for b in policy.layers.values()} != {8}
    with pytest.raises(ValueError, match="below the smallest reachable"):
        search_quant_policy(model, _output_agreement(model), calibration=batches(1), budget_weight_bits=1000,
                            episodes=1)


def test_budget_cut_takes_bits_from_the_last_layers_first() -> None:
    weights = [1, 1, 1, 10]  # three small layers, then a large one

    def cost(bits: list[int]) -> float:
        return sum(w * b for w, b in zip(weights, bits))

    # 104 bits; three full sweeps reach [5, 5, 5, 5] = 65, the fourth stops at the large layer: 55
    assert cut_to_budget([8, 8, 8, 8], cost, 60, [0, 1, 2, 3], min_bits=2) == [5, 5, 5, 4]
    with pytest.raises(RuntimeError, match="every cuttable step at min_bits=2"):  # [8, 2, 2, 8] still costs 92
        cut_to_budget([8, 8, 8, 8], cost, 60, [1, 2], min_bits=2)


def test_agent_state_is_json_and_resumes_exactly() -> None:
    agent = HaqAgent(HaqConfig(batch_size=8), seed=0)
    states = np.random.default_rng(0).uniform(size=(12, 10))
    agent.observe(states, [agent.act(s, "noise") for s in states], reward=0.3)
    agent.update()
    clone = HaqAgent(HaqConfig(batch_size=8), seed=99)
    clone.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert clone.update() == agent.update()
    assert clone.act(states[0], "noise") == agent.act(states[0], "noise")
