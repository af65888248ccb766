"""`proxyless`: ProxylessNAS as a one-shot strategy of the search pipeline.

`prepare` trains the supernet (epoch checkpoints in the run's `proxyless/`, so a killed search
resumes from its last finished epoch); the one trial is the derived network, which the pipeline
trains with the run's training settings and keeps in best/ even when its predicted latency ends
above the budget (its record then says `feasible: false`): a one-shot search has no other
candidate to offer. `latency_budget_ms` is the search's target T.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

from nas.oneshot.checkpoint import load_checkpoint, save_checkpoint
from nas.oneshot.proxyless import ProxylessSearch
from nas.oneshot.proxyless_config import ProxylessConfig
from nas.strategies.base import ONE_SHOT, SEARCHERS, Candidate, Result, Searcher, StrategyContext
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

__all__ = ["CHECKPOINT_DIR", "ProxylessSearcher", "proxyless_config"]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "proxyless"


def proxyless_config(context: StrategyContext, options: dict[str, Any]) -> ProxylessConfig:
    """The supernet settings of a run: `options`, with the target and seed from the search, and the
    epochs, batch size and device from its training settings unless the options set them."""
    reserved_names = ProxylessSearcher.set_by_search
    allowed = [item.name for item in fields(ProxylessConfig) if item.name not in reserved_names]
    for reserved in reserved_names:
        if reserved in options:
            raise OptionError(f"strategy_options.{reserved}: set by the search (latency budget, seed), not an option")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise OptionError(f"strategy_options {unknown} unknown to 'proxyless'; allowed: {allowed}")
    options = dict(options)
    if context.train is not None:  # `--epochs` is the one epoch count a user sets
        options.setdefault("epochs", context.train.epochs)
        options.setdefault("batch_size", context.train.batch_size)
        options.setdefault("device", context.train.device)
    options.setdefault("warmup_epochs", min(1, options.get("epochs", ProxylessConfig.epochs) - 1))
    return ProxylessConfig(target_ms=context.objective.latency_budget_ms, seed=context.seed, **options)


@SEARCHERS.register("proxyless")
class ProxylessSearcher(Searcher):
    """Binarized-path supernet search (Cai et al. 2019), then the derived network as the one trial."""

    name = "proxyless"
    kind = ONE_SHOT
    Options = ProxylessConfig
    set_by_search = ("target_ms", "seed")  # the latency budget and the run's seed
    # one supernet trained in this process, one derived network
    unused_settings = ("trials", "ray", "ray_address", "workers", "cpus_per_trial", "asha", "max_failures")

    def __init__(self, context: StrategyContext, options: ProxylessConfig) -> None:
        super().__init__(context, options)
        self.search: ProxylessSearch | None = None
        self.progress: dict[str, Any] = {}  # where the supernet stands, for searcher.json

    @classmethod
    def parse_options(cls, context: StrategyContext, options: dict[str, Any]) -> ProxylessConfig:
        return proxyless_config(context, options)

    def prepare(self) -> None:
        context = self.context
        if context.table is None or context.data is None or context.work_dir is None:
            raise ValueError("proxyless needs the context's table, data and work_dir")
        search = self.search = ProxylessSearch(self.space, context.table, context.data, self.options)
        checkpoints = context.work_dir / CHECKPOINT_DIR
        load_checkpoint(search, checkpoints)
        while search.epoch < search.config.epochs:
            search.run_epoch()
            save_checkpoint(search, checkpoints)
        self.progress = {"epoch": search.epoch, "epochs": search.config.epochs, "choices": search.choices(),
                         "derived": search.layout.describe(search.choices())}

    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        if self.search is None:
            raise RuntimeError("proxyless: prepare() trains the supernet before the first ask")
        search, last = self.search, self.search.history[-1]
        arch = search.derive()
        if last["derived_latency_ms"] > self.objective.latency_budget_ms:
            logger.warning("proxyless: the derived network's predicted latency %.3f ms exceeds the budget %g ms",
                           last["derived_latency_ms"], self.objective.latency_budget_ms)
        return arch, {"strategy": self.name, **self.progress, "search": {
            "target_ms": search.config.target_ms, "expected_latency_ms": last["expected_latency_ms"],
            "probabilities": last["probabilities"]}}

    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        pass  # the supernet learned before the trial; the trial only measures what it found

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.progress, "finished": self.next_trial_id > 0,
                "checkpoint": f"{CHECKPOINT_DIR}/state.json"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.progress = {key: state[key] for key in ("epoch", "epochs", "choices", "derived") if key in state}
