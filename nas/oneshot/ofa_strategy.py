"""`once-for-all`: Once-for-All (Cai et al., ICLR 2020) as a one-shot strategy of the search pipeline.

`prepare` trains the elastic supernet (or resumes it: epoch checkpoints in the run's `supernet/`,
the directory `nas supernet specialize RUN` reads), evaluates `samples` sub-networks with
inherited, BN re-calibrated weights, fits the accuracy predictor (both kept in `supernet/`, so a
resumed run or a later `nas supernet specialize` for another budget reuses them) and specialises
to the search's `--latency-budget` under the run's latency model. The chosen network, with its
inherited weights and metrics, is written to `supernet/specialized/` (what `nas supernet
specialize --out` would write).

The one trial is that network, starting from its inherited weights (the candidate's
`initial_weights`, which `nas.search.trial.train_candidate` loads instead of a fresh
initialisation): the run's training settings fine-tune it. The inherited accuracy is in the
trial's info beside the fine-tuned one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_config import OFATrainConfig
from nas.oneshot.ofa_predictor import PredictorConfig
from nas.oneshot.ofa_run import inherited_model, run_predictor, specialize_supernet, write_specialized
from nas.oneshot.ofa_specialize import EvolutionSettings
from nas.oneshot.ofa_train import train_supernet
from nas.strategies.base import INITIAL_WEIGHTS, ONE_SHOT, SEARCHERS, Candidate, Result, Searcher, StrategyContext
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec

__all__ = ["SUPERNET_DIR", "OnceForAllOptions", "OnceForAllSearcher"]

logger = logging.getLogger(__name__)

SUPERNET_DIR = "supernet"
SPECIALIZED_DIR = "specialized"


@dataclass(frozen=True)
class OnceForAllOptions:
    supernet_epochs: int = 10  # sandwich-rule epochs of the supernet
    batch_size: int | None = None  # None: the run's --batch-size
    lr: float = 0.05
    random_subnets: int = 2  # random sub-networks per step, besides the largest and the smallest
    max_batches_per_epoch: int | None = None
    sampling: str = "network"  # random sub-networks per step: uniform over networks, or "choice" (OFA's)
    schedule: str = "sandwich"  # or "progressive": progressive shrinking (OFATrainConfig.schedule)
    phase_fractions: tuple[float, ...] | None = None  # progressive: share of the epochs per phase (None: equal)
    samples: int = 200  # sub-networks evaluated to fit the accuracy predictor
    calibration_images: int = 512  # BN re-calibration images per sub-network
    predictor_epochs: int = 100
    predictor_hidden: int = 400
    predictor_members: int = 2
    predictor_folds: int = 3
    population: int = 100
    generations: int = 50

    def __post_init__(self) -> None:
        for name in ("supernet_epochs", "samples", "calibration_images"):
            if getattr(self, name) < 1:
                raise OptionError(f"strategy_options.{name}={getattr(self, name)} must be >= 1")
        if self.sampling not in ("network", "choice"):
            raise OptionError(f"strategy_options.sampling={self.sampling!r} not in {{network, choice}}")
        if self.samples < 2:
            raise OptionError(f"strategy_options.samples={self.samples} must be >= 2 (largest and smallest)")
        try:
            checked = OFATrainConfig(schedule=self.schedule, phase_fractions=self.phase_fractions)
        except OptionError as error:
            raise OptionError(str(error).replace("OFATrainConfig.", "strategy_options.")) from None
        object.__setattr__(self, "phase_fractions", checked.phase_fractions)
        self.predictor_config()
        self.evolution()

    def predictor_config(self) -> PredictorConfig:
        return PredictorConfig(members=self.predictor_members, hidden=self.predictor_hidden,
                               epochs=self.predictor_epochs, folds=self.predictor_folds)

    def evolution(self) -> EvolutionSettings:
        return EvolutionSettings(population=self.population, generations=self.generations)


@SEARCHERS.register("once-for-all")
class OnceForAllSearcher(Searcher):
    """Once-for-All: an elastic supernet trained once, an accuracy predictor, evolution to the budget."""

    name = "once-for-all"
    kind = ONE_SHOT
    Options = OnceForAllOptions
    unused_settings = ("trials", "ray", "ray_address", "workers", "cpus_per_trial", "asha", "max_failures")

    def __init__(self, context: StrategyContext, options: OnceForAllOptions) -> None:
        super().__init__(context, options)
        self.chosen: ArchSpec | None = None
        self.progress: dict[str, Any] = {}  # what prepare found, for searcher.json and the trial's info

    def train_config(self) -> OFATrainConfig:
        train, options = self.context.train, self.options
        return OFATrainConfig(epochs=options.supernet_epochs, lr=options.lr, random_subnets=options.random_subnets,
                              batch_size=options.batch_size or (train.batch_size if train is not None else 64),
                              max_batches_per_epoch=options.max_batches_per_epoch, sampling=options.sampling,
                              schedule=options.schedule, phase_fractions=options.phase_fractions,
                              device=train.device if train is not None else "auto", seed=self.seed)

    def prepare(self) -> None:
        context, options = self.context, self.options
        if context.table is None or context.data is None or context.work_dir is None:
            raise ValueError("once-for-all needs the context's table, data and work_dir")
        directory = context.work_dir / SUPERNET_DIR
        config = self.train_config()
        with torch.random.fork_rng(devices=[]):  # the same seed, the same supernet; the caller's RNG untouched
            torch.manual_seed(self.seed)
            supernet = ElasticSupernet(self.space)  # SupernetPlanError (a UserError) for a space it does not cover
        training = train_supernet(supernet, context.data, config, directory, progress=context.progress)
        predictor, cost = run_predictor(supernet, context.data, directory, samples=options.samples, seed=self.seed,
                                        config=options.predictor_config(),
                                        calibration_images=options.calibration_images, device=config.device,
                                        progress=context.progress)
        found = specialize_supernet(supernet, predictor, context.table, self.objective.latency_budget_ms,
                                    options.evolution(), seed=self.seed)
        model, inherited = inherited_model(supernet, found.arch, context.data,
                                           calibration_images=options.calibration_images, device=config.device)
        metrics = {**found.to_dict(), "inherited_accuracy": inherited, "predictor": cost,
                   "supernet_epoch": training["epoch"]}
        write_specialized(directory / SPECIALIZED_DIR, model, found.arch, metrics)
        self.chosen = found.arch
        self.progress = {"supernet_epoch": training["epoch"], "predicted_accuracy": found.predicted_accuracy,
                         "predicted_latency_ms": found.latency_ms, "inherited_accuracy": inherited,
                         "predictor_rmse": predictor.rmse, "specialize_seconds": found.seconds,
                         "specialized": f"{SUPERNET_DIR}/{SPECIALIZED_DIR}"}
        logger.info("once-for-all: predicted accuracy %.4f at %.3f ms (budget %g ms), inherited accuracy %.4f, "
                    "specialised in %.2f s", found.predicted_accuracy, found.latency_ms,
                    self.objective.latency_budget_ms, inherited, found.seconds)

    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        if self.chosen is None:
            raise RuntimeError("once-for-all: prepare() trains and specialises the supernet before the first ask")
        weights = (self.context.work_dir / SUPERNET_DIR / SPECIALIZED_DIR).resolve() if self.context.work_dir else None
        return self.chosen, {"strategy": self.name, **self.progress, "options": asdict(self.options),
                             **({INITIAL_WEIGHTS: str(weights)} if weights is not None else {})}

    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        pass  # everything was learned before the trial

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.progress, "finished": self.next_trial_id > 0,
                "chosen": self.chosen.to_dict() if self.chosen is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.progress = {key: value for key, value in state.items()
                         if key in ("supernet_epoch", "predicted_accuracy", "predicted_latency_ms",
                                    "inherited_accuracy", "predictor_rmse", "specialize_seconds", "specialized")}
        self.chosen = ArchSpec.from_dict(state["chosen"]) if state.get("chosen") else None
