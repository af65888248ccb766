"""ProxylessNAS (Cai, Zhu, Han, ICLR 2019): a one-shot search that trains one supernet with
binarized paths and ends in an `ArchSpec`. Not an ask/tell `Searcher`: it lives beside them.

Each search step alternates (paper Sec. 3.2, Fig. 2):

1. weight step on a *train* batch: one path per slot drawn from softmax(alpha), SGD on the weights
   of the active paths only (unsampled candidates have no gradient, so no decay or momentum either);
2. architecture step on a *val* batch (every `arch_update_every` weight steps, after
   `warmup_epochs` weight-only epochs): two paths per slot, the loss below, gate gradients turned
   into logit gradients over the two sampled paths (`gate_gradient_to_alpha`), an Adam step on the
   logits, and the two logits shifted back so unsampled paths keep their probabilities.

The architecture loss and its forms are described in `nas.oneshot.proxyless_config`.

Derivation (`derive`): ``argmax`` (paper Sec. 3.2; the default) takes the most likely option per
slot, `skip` removing the layer. After a short search the distributions have not peaked and E[LAT]
= T is met by mixtures no single network realises (e.g. every skippable layer half skipped); the
argmax network then misses T in the direction the latency term pushed. Measured on CIFAR-10 at
32 px, 6 epochs x 30 steps, E within 1% of T: with arch_lr 0.05 the argmax network was -57% off a
low target and +18% off a high one; with arch_lr 0.2 (the default: entropy falls from 1.87 to
0.7-0.8 nats) -12% and +4%. ``target``
takes the most probable network under the learned distributions whose predicted latency is within
T * (1 +- `derive_tolerance`) (exact, `LatencyModel.most_likely_within`), argmax if there is none.

Logits are updated with Adam with beta1 = 0 (as the authors): with no momentum, the zero gradient
of an unsampled path moves nothing. Every random draw of epoch e (data order, paths, dropout) comes
from generators seeded by (seed, e), so a search resumed from the checkpoint of epoch e - 1
repeats epoch e exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from nas.training.data import DataSplits
from nas.oneshot.proxyless_config import DERIVE_RULES, LOSS_FORMS, ProxylessConfig, latency_loss
from nas.oneshot.supernet import (LatencyModel, Supernet, gate_gradient_to_alpha, rescale_sampled_logits,
                                  restricted_probabilities)
from nas.oneshot.layout import SupernetLayout, layout_for_space
from nas.training.device import cuda_devices, resolve_device
from nas.training.train import warmup_cosine_lr
from predictors.latency import LatencyTable
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

__all__ = ["LOSS_FORMS", "ProxylessConfig", "ProxylessSearch", "latency_loss"]

logger = logging.getLogger(__name__)

STREAMS = {"train": 0, "val": 1, "paths": 2, "dropout": 3}


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    return int(np.random.SeedSequence([seed, epoch, STREAMS[stream]]).generate_state(1)[0])


def _batches(data: TensorDataset, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled full batches, forever (a new order per pass); a ragged last batch is dropped
    because a 1-image batch breaks BatchNorm after global pooling."""
    images, labels = data.tensors[0], data.tensors[1]
    size = min(batch_size, len(labels))
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels) - size + 1, size):
            index = order[start:start + size]
            yield images[index], labels[index]


class ProxylessSearch:
    """One supernet search: `run_epoch` until `config.epochs`, then `derive()` the network.
    `nas.oneshot.checkpoint` saves and restores a finished epoch."""

    def __init__(self, space: SearchSpace, table: LatencyTable, data: DataSplits, config: ProxylessConfig) -> None:
        self.space, self.data, self.config = space, data, config
        self.layout: SupernetLayout = layout_for_space(space, **config.layout)
        self.latency = LatencyModel(self.layout, table)
        self.device = resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, caller's RNG untouched
            torch.manual_seed(config.seed)
            self.supernet = Supernet(self.layout)
        self.supernet.to(self.device)
        self.weight_optimizer = torch.optim.SGD(
            self.supernet.weight_parameters(), lr=config.weight_lr, momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
        self.arch_optimizer = torch.optim.Adam(list(self.supernet.alphas), lr=config.arch_lr,
                                               betas=config.arch_betas, eps=1e-8)
        self.criterion = nn.CrossEntropyLoss()
        n_train = len(data.train)
        self.steps_per_epoch = max(1, n_train // config.batch_size)
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        self.epoch = 0
        self.history: list[dict[str, Any]] = [self._record(0, {})]

    # -- one step each -----------------------------------------------------------------------------
    def weight_step(self, images: Tensor, labels: Tensor, lr: float, generator: torch.Generator) -> float:
        """Sample paths, train the active ones on a train batch; returns the loss."""
        model = self.supernet
        model.train()
        model.sample("single" if self.config.binarize == "two" else "all", generator)
        loss = self.criterion(model(images.to(self.device)), labels.to(self.device))
        if not torch.isfinite(loss).item():
            raise FloatingPointError(f"proxyless: non-finite weight loss at epoch {self.epoch + 1}")
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr
        self.weight_optimizer.zero_grad(set_to_none=True)  # unsampled candidates keep grad None: untouched
        weights = self.supernet.weight_parameters()
        loss.backward(inputs=weights)
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_([w for w in weights if w.grad is not None], self.config.grad_clip)
        self.weight_optimizer.step()
        return float(loss.detach())

    def arch_gradients(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Sample two paths per slot (or all), and leave dLoss/dalpha in `alpha.grad`: the latency
        term by autograd through the restricted softmax, the CE term through the binary gates."""
        model, config = self.supernet, self.config
        model.train()
        model.sample(config.binarize, generator)
        logits = model(images.to(self.device))
        labels = labels.to(self.device)
        ce = self.criterion(logits, labels)
        expected = self.latency.expected_ms(model.probabilities())
        if config.binarize == "two":
            # value: the true E[LAT] (the abs loss must know which side of T it is on); gradient:
            # through the two sampled logits only (their renormalised softmax), as the two-path
            # update requires. The restricted E alone is biased low once skip holds much mass
            # (a sampled skip dominates its pair), which stalls an abs-loss search above T.
            restricted = self.latency.expected_ms([restricted_probabilities(alpha, model.sampled_paths(s))
                                                   for s, alpha in enumerate(model.alphas)])
            expected = expected.detach() + (restricted - restricted.detach())
        loss = latency_loss(ce, expected, config)
        if not torch.isfinite(loss).item():
            raise FloatingPointError(f"proxyless: non-finite architecture loss at epoch {self.epoch + 1}")
        alphas = list(model.alphas)
        for alpha in alphas:
            alpha.grad = None
        loss.backward(inputs=alphas + model.gates)  # no weight gradients: they are not needed here
        for s, alpha in enumerate(alphas):
            if alpha.grad is None:
                alpha.grad = torch.zeros_like(alpha)
            if config.binarize == "two" and model.gates[s].grad is not None:
                alpha.grad += gate_gradient_to_alpha(model.gates[s].grad, alpha, model.sampled_paths(s))
        accuracy = float((logits.argmax(1) == labels).float().mean())
        return {"arch_loss": float(loss.detach()), "arch_ce": float(ce.detach()),
                "step_latency_ms": float(expected.detach()), "arch_accuracy": accuracy}

    def arch_step(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, float]:
        stats = self.arch_gradients(images, labels, generator)
        model = self.supernet
        before = [alpha.detach().clone() for alpha in model.alphas]
        self.arch_optimizer.step()
        if self.config.binarize == "two":
            with torch.no_grad():
                for s, alpha in enumerate(model.alphas):
                    paths = model.sampled_paths(s)
                    untouched = torch.ones_like(alpha, dtype=torch.bool)
                    untouched[paths] = False
                    alpha[untouched] = before[s][untouched]  # exact, whatever the optimizer's state
                    rescale_sampled_logits(alpha, paths, before[s])
        return stats

    # -- epochs ------------------------------------------------------------------------------------
    def _lr(self, step: int) -> float:  # cosine decay, no warm-up
        return warmup_cosine_lr(step, self.steps_per_epoch * self.config.epochs, 0, self.config.weight_lr)

    def run_epoch(self) -> dict[str, Any]:
        """Train one more epoch; returns (and appends to `history`) its record."""
        epoch, config = self.epoch + 1, self.config
        if epoch > config.epochs:
            raise ValueError(f"proxyless: all {config.epochs} epochs are done")
        start = time.perf_counter()
        generators = {name: torch.Generator().manual_seed(epoch_seed(config.seed, epoch, name)) for name in STREAMS}
        train_batches = _batches(self.data.train, config.batch_size, generators["train"])
        val_batches = _batches(self.data.val, config.batch_size, generators["val"])
        update_alpha = epoch > config.warmup_epochs
        sums: dict[str, float] = {}
        weight_losses = []
        with torch.random.fork_rng(devices=cuda_devices(self.device)):
            torch.manual_seed(epoch_seed(config.seed, epoch, "dropout"))  # dropout of the head
            for step in range(self.steps_per_epoch):
                images, labels = next(train_batches)
                lr = self._lr((epoch - 1) * self.steps_per_epoch + step)
                weight_losses.append(self.weight_step(images, labels, lr, generators["paths"]))
                if update_alpha and (step + 1) % config.arch_update_every == 0:
                    for key, value in self.arch_step(*next(val_batches), generators["paths"]).items():
                        sums[key] = sums.get(key, 0.0) + value
                    sums["arch_steps"] = sums.get("arch_steps", 0.0) + 1
        arch_steps = int(sums.pop("arch_steps", 0))
        stats = {key: value / arch_steps for key, value in sums.items()}
        stats.update(train_loss=float(np.mean(weight_losses)), weight_steps=len(weight_losses),
                     arch_steps=arch_steps, elapsed_s=round(time.perf_counter() - start, 3))
        self.epoch = epoch
        record = self._record(epoch, stats)
        self.history.append(record)
        logger.info("proxyless epoch %d/%d: loss %.3f, E[LAT] %.3f ms (target %.3f), argmax net %.3f ms, "
                    "entropy %.3f, %.1fs", epoch, config.epochs, stats["train_loss"], record["expected_latency_ms"],
                    config.target_ms, record["derived_latency_ms"], record["entropy"], stats["elapsed_s"])
        return record

    def run(self) -> ArchSpec:
        while self.epoch < self.config.epochs:
            self.run_epoch()
        return self.derive()

    # -- results -----------------------------------------------------------------------------------
    def choices(self, rule: str | None = None) -> list[int]:
        """One option per slot by `rule` (default: the config's `derive`): ``argmax`` per slot (the
        paper), or ``target``: the most probable network under the learned distributions whose
        predicted latency is within target * (1 +- derive_tolerance) (argmax when none is)."""
        rule = rule or self.config.derive
        if rule == "target":
            with torch.no_grad():
                found = self.latency.most_likely_within(self.supernet.probabilities(), self.config.target_ms,
                                                        self.config.derive_tolerance)
            if found is not None:
                return found
            logger.warning("proxyless: no network within %.0f%% of %.3f ms; deriving by argmax",
                           100 * self.config.derive_tolerance, self.config.target_ms)
        return self.supernet.argmax_choices()

    def derive(self, rule: str | None = None) -> ArchSpec:
        """The derived option of every slot, decoded by the space (a skipped layer is absent)."""
        return self.layout.derive(self.choices(rule), name=f"{self.space.name}-proxyless@{self.space.resolution}")

    def _record(self, epoch: int, stats: dict[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            probabilities = [p.double().cpu() for p in self.supernet.probabilities()]
            expected = float(self.latency.expected_ms([p.float() for p in probabilities]))
        entropy = float(np.mean([-(p * p.clamp_min(1e-12).log()).sum().item() for p in probabilities]))
        choices = self.choices()
        return {"epoch": epoch, "probabilities": [[round(float(v), 6) for v in p] for p in probabilities],
                "choices": choices, "derived": self.layout.describe(choices),
                "expected_latency_ms": expected, "derived_latency_ms": self.latency.of_choices(choices),
                "latency_by_rule_ms": {rule: self.latency.of_choices(self.choices(rule)) for rule in DERIVE_RULES},
                "target_ms": self.config.target_ms, "entropy": entropy, **stats}

    def alpha_history(self) -> dict[str, Any]:
        """Per-slot probabilities after every epoch (epoch 0: the start), for convergence plots."""
        return {"format": "hwnas-proxyless-alpha-history", "space": self.space.name,
                "slots": [{"name": s.name, "labels": list(s.labels)} for s in self.layout.slots],
                "target_ms": self.config.target_ms, "epochs": self.history}
