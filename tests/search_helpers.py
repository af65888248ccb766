"""Shared pieces of the search-runner tests: the tiny space as `tiny` and a deterministic test
searcher as `test-cycle` (registered only inside `registered()`, so other tests see the built-in
registries unchanged), a fake latency table and a small SearchConfig. Subprocesses call
`register()` after `sys.path.insert(0, "tests")`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tiny_space import TinySpace

from nas.search.config import SearchConfig
from nas.strategies.base import SEARCHERS, Candidate, Result, Searcher, StrategyContext
from nas.training.train import TrainConfig
from predictors.latency import LatencyTable, LocalMeasurer, Measurement, build_table
from search_spaces.spaces import SPACES
from search_spaces.spec import ArchSpec


class CycleSearcher(Searcher):
    """Proposes the tiny space's architectures in a fixed order (by trial id), so every ask is
    predictable: trial t gets all_archs()[ORDER[t % 8]]. Records what it was told."""

    name = "test-cycle"
    ORDER = (0, 4, 2, 6, 1, 5, 3, 7)

    def __init__(self, context: StrategyContext, options: Any = None) -> None:
        super().__init__(context, options)
        self.archs = context.space.all_archs()
        self.told_ids: list[int] = []

    def arch_for(self, trial_id: int) -> ArchSpec:
        return self.archs[self.ORDER[trial_id % len(self.archs)]]

    def _propose(self) -> tuple[ArchSpec, dict[str, Any] | None]:
        return self.arch_for(self.next_trial_id), {"slot": self.next_trial_id % len(self.archs)}

    def _observe(self, candidate: Candidate, result: Result, reward: float) -> None:
        self.told_ids.append(candidate.trial_id)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "told_ids": list(self.told_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.told_ids = list(state["told_ids"])


ENTRIES = ((SPACES, "tiny", TinySpace), (SEARCHERS, "test-cycle", CycleSearcher))


def register() -> None:
    for registry, name, entry in ENTRIES:
        if name not in registry:
            registry.add(name, entry)


@contextmanager
def registered() -> Iterator[None]:
    added = [(registry, name) for registry, name, _ in ENTRIES if name not in registry]
    register()
    try:
        yield
    finally:
        for registry, name in added:
            registry._entries.pop(name, None)  # Registry has no public removal (tests only need it)


FIXTURES = Path(__file__).parent / "fixtures"


@contextmanager
def old_run_copy(tmp_path: Path) -> Iterator[Path]:
    """The first wave's 3-trial run (best/ = trial 0) copied under `tmp_path`, its table beside it,
    with the test searcher registered while it is used."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v1", run)
    config = json.loads((run / "config.json").read_text())
    config["lut_path"] = str(shutil.copy(FIXTURES / "run_v1_lut.json", tmp_path / "lut.json"))
    (run / "config.json").write_text(json.dumps(config))
    with registered():
        yield run


class FakeMeasurer:
    """Latency = 1 ms per 10 characters of the layer key, +1 ms for kernel 5, +0.5 ms for
    expansion 3: deterministic, instant, and different for most tiny networks. Claims the torch
    backend and this machine as its device, so the CLI's end-to-end measurement of the winner
    runs for real (a table from another device is never measured here)."""

    def metadata(self) -> dict[str, Any]:
        here = LocalMeasurer("torch", threads=1).metadata()
        return {"backend": "torch", "threads": 1, "device": here["device"], "cpu_model": here["cpu_model"]}

    def measure_layers(self, layers: Any, progress: Any = None) -> list[Measurement]:
        values = [len(layer.signature) / 10 + ("_k5" in layer.signature) + 0.5 * ("_e3" in layer.signature)
                  for layer in layers]
        return [Measurement(v, v, v, 1) for v in values]

    def measure_archs(self, archs: Any, progress: Any = None) -> list[Measurement]:
        raise NotImplementedError


def make_table(path: Path, space: TinySpace | None = None) -> LatencyTable:
    return build_table(space or TinySpace(), FakeMeasurer(), path)


def latencies(table: LatencyTable, space: TinySpace | None = None) -> list[float]:
    return [table.predict(arch) for arch in (space or TinySpace()).all_archs()]


def tiny_config(lut: Path, *, budget: float | None = None, trials: int = 6, strategy: str = "test-cycle",
                **changes: Any) -> SearchConfig:
    """tiny space, synthetic:4 at 16 px, 96 training images, 1 epoch."""
    table = LatencyTable.load(lut)
    if budget is None:
        values = sorted(latencies(table))
        budget = (values[5] + values[6]) / 2  # 6 of the 8 networks fit
    changes.setdefault("train", TrainConfig(epochs=1, batch_size=32, device="cpu", lr=0.1))
    return SearchConfig(space="tiny", latency_budget_ms=budget, lut_path=str(lut), dataset="synthetic:4",
                        resolution=16, strategy=strategy, trials=trials, train_limit=96, **changes)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
