"""What every study of `bench.toolbox` receives: the trained base network, the data, the base
recipe, and the measuring and fine-tuning it shares, so every method is judged on one network
with one recipe and one latency protocol.

A study is a module with ``run(ctx: ToolboxContext) -> dict`` (plain JSON-able results) and
``render(result: dict) -> list[str]`` (its Markdown lines for BENCHMARKS.md)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nas.training import DataSplits, TrainConfig, TrainReport, distilled_finetune, evaluate
from predictors.latency import MeasureSettings
from search_spaces.spec import ArchSpec

EVAL_BATCH = 64


@dataclass
class ToolboxContext:
    spec: ArchSpec            # the base architecture (CIFAR MobileNetV2, `bench.compression_parts.cifar_mobilenet_v2`)
    base: nn.Module           # trained fp32, eval mode, CPU; studies copy it (`fresh_base`), never change it
    base_accuracy: float      # test accuracy of `base`
    data: DataSplits
    config: TrainConfig       # the base recipe (epochs, lr, batch, device, max_batches_per_epoch, seed)
    finetune_epochs: int      # distilled fine-tune epochs after each compression step
    measure: MeasureSettings  # the latency protocol (ONNX Runtime, 1 thread, batch 1)
    out: Path                 # scratch directory of this run (models, plots); not committed
    seed: int

    def fresh_base(self) -> nn.Module:
        return copy.deepcopy(self.base)

    def test_accuracy(self, model: nn.Module) -> float:
        return evaluate(model, self.data.test, batch_size=EVAL_BATCH, device=self.config.device)

    def finetune(self, model: nn.Module, epochs: int | None = None, **overrides: Any) -> TrainReport:
        """The project's distilled fine-tune (AdamW 1e-3, cosine, KD from the fp32 base), test evaluated."""
        return distilled_finetune(model, self.base, self.data, self.config,
                                  epochs=self.finetune_epochs if epochs is None else epochs, **overrides)

    def latency_ms(self, models: Mapping[str, nn.Module]) -> dict[str, dict[str, float]]:
        """ONNX Runtime latency (1 thread, batch 1) of every model in ONE interleaved measurement."""
        from predictors.latency import get_backend, measure_modules

        shape = (1, 3, self.spec.resolution, self.spec.resolution)
        m = self.measure
        measured = measure_modules(get_backend("onnxruntime", threads=1), [(model.eval(), shape) for model in models.values()],
                                   warmup=m.warmup, blocks=m.blocks, block_runs=m.block_runs,
                                   max_spread=m.max_spread, retries=m.retries)
        return {name: measurement.to_dict() for name, measurement in zip(models, measured)}
