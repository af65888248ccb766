"""`mnas-rl`: the MnasNet controller (Tan et al. 2019, sec. 4.2): an LSTM policy that emits one
token per decision of the space, trained with REINFORCE on the MnasNet reward.

Policy. Step i reads the embedding of the token chosen at step i-1 (a learned start vector at
step 0), advances an `LSTMCell`, and its own linear head gives a softmax over decision i's
options: the factorized, per-decision choices of the paper. As in ENAS (Pham et al. 2018) the
logits pass through `tanh_constant * tanh(.)`, so no option's probability can reach 1 within a
few updates and the policy keeps exploring on the small trial budgets of this tool.

Learning. loss = -mean(A * log p(tokens)) - entropy_weight * mean(entropy), with Adam. The
advantage A = (R - b) / s: b is an exponential moving average of the rewards told so far
(started at the first reward, so that first sample teaches nothing instead of everything) and s
the moving root-mean-square of R - b (`normalize=True`). Rewards of one search differ by a few
hundredths of accuracy; dividing by s makes `entropy_weight` mean the same whatever that spread
is. Normalised advantages are clipped to +-`advantage_clip` (3): a rejected sample (reward 0,
below) sits some 15 s under the baseline, and unclipped it dominates Adam's step-size estimate
and stalls learning from the real rewards (with half the space rejected, clipping raised the
mean best reward after 60 trials from 0.833 to 0.847 on the synthetic test objective, 6 seeds).

Update schedule. The paper trains with PPO on large synchronous batches; with tens to hundreds
of trials we take one REINFORCE step after every `update_every` tells (default 1: each result is
used as soon as it arrives, whichever trial it belongs to). Log-probabilities are recomputed
under the current policy at update time, because with asynchronous trials the policy may have
moved since the tokens were sampled.

Infeasible samples. When the pre-check (`is_feasible`, usually the latency table) rejects a
sample, no trial is spent on it: it goes into the update buffer with reward 0 (the worst
reward, what a failed trial gets) and the controller samples again, up to `max_rejections`
times. The buffered zeros are learned from at the next update, so the controller stops sampling
what the pre-check rejects (half the space rejected: 15, 13, 5 and 1 rejections per 20 asks over
the first 80, mean of 6 seeds). If every resample is rejected the proposal is a random feasible
architecture (its tokens are its encoding), so `ask` returns a feasible architecture whenever
the space holds one.

Determinism. Weights are initialised and tokens sampled from a `torch.Generator` seeded from
the searcher's seed; the global torch RNG is never touched (modules are created on the `meta`
device and initialised explicitly). `state_dict` holds weights, Adam moments, the baseline and
both RNG states as JSON lists: no pickle, and a loaded controller continues bit for bit (about
2.6 MB of JSON for 10 decisions at hidden size 64: weights and two Adam moments).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)


class Controller(nn.Module):
    """LSTM over the decisions; one embedding table and one softmax head per decision."""

    def __init__(self, cardinalities: Sequence[int], hidden_size: int, tanh_constant: float,
                 generator: torch.Generator, init_range: float = 0.1) -> None:
        super().__init__()
        self.cardinalities = list(cardinalities)
        self.hidden_size = hidden_size
        self.tanh_constant = tanh_constant
        meta = torch.device("meta")  # no default init: it would draw from the global RNG
        self.start = nn.Parameter(torch.empty(1, hidden_size, device=meta))
        self.cell = nn.LSTMCell(hidden_size, hidden_size, device=meta)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden_size, device=meta) for n in self.cardinalities)
        self.heads = nn.ModuleList(nn.Linear(hidden_size, n, device=meta) for n in self.cardinalities)
        self.to_empty(device="cpu")
        with torch.no_grad():
            for parameter in self.parameters():  # uniform(-0.1, 0.1): the NAS/ENAS controller init
                parameter.uniform_(-init_range, init_range, generator=generator)

    def _logits(self, step: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.tanh_constant * torch.tanh(self.heads[step](hidden))

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> list[int]:
        tokens: list[int] = []
        inputs, state = self.start, None
        for step in range(len(self.cardinalities)):
            state = self.cell(inputs, state)
            probs = torch.softmax(self._logits(step, state[0]), dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator).item())
            tokens.append(token)
            inputs = self.embeddings[step](torch.tensor([token]))
        return tokens

    def evaluate(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability and entropy of each row of `tokens` (batch, decisions)."""
        batch = tokens.shape[0]
        inputs, state = self.start.expand(batch, -1), None
        log_prob = torch.zeros(batch)
        entropy = torch.zeros(batch)
        for step in range(len(self.cardinalities)):
            state = self.cell(inputs, state)
            log_probs = torch.log_softmax(self._logits(step, state[0]), dim=-1)
            log_prob = log_prob + log_probs.gather(1, tokens[:, step:step + 1]).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(dim=1)
            inputs = self.embeddings[step](tokens[:, step])
        return log_prob, entropy


# -- JSON encoding of tensors: exact for float32 (float32 -> Python float is exact, and JSON
# writes floats with a round-tripping repr) --------------------------------------------------------
def to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def _optimizer_from_json(data: dict[str, Any]) -> dict[str, Any]:
    state = {int(key): from_json(item) for key, item in data["state"].items()}  # JSON keys are strings
    groups = []
    for group in data["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


@dataclass(frozen=True)
class MnasRLOptions:
    hidden_size: int = 64
    learning_rate: float = 0.003
    baseline_decay: float = 0.9
    entropy_weight: float = 0.01
    tanh_constant: float = 2.5
    update_every: int = 1
    max_rejections: int = 64
    normalize: bool = True
    advantage_clip: float | None = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.baseline_decay < 1.0:
            raise OptionError(f"baseline_decay={self.baseline_decay} must be in [0, 1) (MnasNet-style EMA, e.g. 0.9)")
        if self.update_every < 1 or self.max_rejections < 0 or self.hidden_size < 1:
            raise OptionError(f"update_every={self.update_every} (>= 1), max_rejections={self.max_rejections} "
                              f"(>= 0) and hidden_size={self.hidden_size} (>= 1) are out of range")
        if self.advantage_clip is not None and not self.advantage_clip > 0:
            raise OptionError(f"advantage_clip={self.advantage_clip} must be > 0 (in reward standard deviations) "
                              "or None")


@SEARCHERS.register("mnas-rl")
class MnasRLSearcher(Searcher):
    """REINFORCE-trained LSTM controller over the space's decisions (MnasNet)."""

    name = "mnas-rl"

    Options = MnasRLOptions

    def __init__(self, context: StrategyContext, options: MnasRLOptions | None = None, **settings: Any) -> None:
        super().__init__(context, options, **settings)
        o = self.options
        self.generator = torch.Generator().manual_seed(self.seed)
        self.controller = Controller(self.space.cardinalities, o.hidden_size, o.tanh_constant, self.generator)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=o.learning_rate)
        self.baseline: float | None = None
        self.reward_var: float | None = None  # EMA of (R - b)^2, the scale of the advantages
        # samples waiting for the next policy step: (tokens, reward, told) -- told=False marks a
        # pre-check rejection, which teaches the policy but does not move the baseline
        self.buffer: list[tuple[list[int], float, bool]] = []
        self.tells_since_update = 0
        self.updates = 0
        self.rejections = 0

    # -- proposing ---------------------------------------------------------------------------------
    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        rejected = 0
        while True:
            tokens = self.controller.sample(self.generator)
            arch = self.space.decode(tokens)
            if self.is_feasible(arch):
                break
            self.buffer.append((tokens, 0.0, False))
            rejected += 1
            if rejected > self.options.max_rejections:
                logger.info("mnas-rl: %d samples rejected by the pre-check; proposing a random feasible one", rejected)
                arch = self.sample_feasible()
                tokens = [int(index) for index in self.space.encode(arch)]
                break
        self.rejections += rejected
        return arch, {"tokens": tokens, "rejected": rejected}

    # -- learning ----------------------------------------------------------------------------------
    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        tokens = candidate.info.get("tokens")
        if tokens is None:  # a candidate not proposed by this controller: learn from its encoding
            tokens = [int(index) for index in self.space.encode(candidate.arch)]
        self.buffer.append(([int(token) for token in tokens], float(reward), True))
        self.tells_since_update += 1
        if self.tells_since_update >= self.options.update_every:
            self._update()

    def _update(self) -> None:
        o = self.options
        told = [reward for _, reward, was_told in self.buffer if was_told]
        if self.baseline is None:
            self.baseline = told[0] if told else 0.0
        # advantages against the baseline as it was before these rewards (it must not include
        # the sample it judges), then the baseline absorbs them
        scale = 1.0
        if o.normalize and self.reward_var is not None and self.reward_var > 0:
            scale = 1.0 / (self.reward_var ** 0.5 + 1e-8)
        advantages = torch.tensor([(reward - self.baseline) * scale for _, reward, _ in self.buffer])
        if o.normalize and o.advantage_clip is not None:
            advantages = advantages.clamp(-o.advantage_clip, o.advantage_clip)
        tokens = torch.tensor([sample for sample, _, _ in self.buffer], dtype=torch.long)
        log_prob, entropy = self.controller.evaluate(tokens)
        loss = -(advantages * log_prob).mean() - o.entropy_weight * entropy.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        for reward in told:
            deviation = (reward - self.baseline) ** 2
            self.reward_var = deviation if self.reward_var is None else (
                o.baseline_decay * self.reward_var + (1.0 - o.baseline_decay) * deviation)
            self.baseline = o.baseline_decay * self.baseline + (1.0 - o.baseline_decay) * reward
        logger.debug("mnas-rl update %d: %d samples, loss %.4f, baseline %.4f",
                     self.updates, len(self.buffer), float(loss.detach()), self.baseline)
        self.buffer.clear()
        self.tells_since_update = 0
        self.updates += 1

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "policy": to_json(self.controller.state_dict()),
            "optimizer": to_json(self.optimizer.state_dict()),
            "torch_rng": self.generator.get_state().tolist(),
            "baseline": self.baseline,
            "reward_var": self.reward_var,
            "buffer": [[tokens, reward, told] for tokens, reward, told in self.buffer],
            "tells_since_update": self.tells_since_update,
            "updates": self.updates,
            "rejections": self.rejections,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.controller.load_state_dict(from_json(state["policy"]))
        self.optimizer.load_state_dict(_optimizer_from_json(state["optimizer"]))
        self.generator.set_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.baseline = state["baseline"]
        self.reward_var = state.get("reward_var")
        self.buffer = [([int(t) for t in tokens], float(reward), bool(told)) for tokens, reward, told in state["buffer"]]
        self.tells_since_update = int(state["tells_since_update"])
        self.updates = int(state["updates"])
        self.rejections = int(state.get("rejections", 0))
