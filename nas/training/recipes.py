"""Named training recipes: the settings that make a fine-tune a fine-tune or a final training the
benchmark's final training, kept in one place so `nas compress` and the benchmarks cannot drift.

A recipe names only the fields that define it; `recipe` lays them over a base config (the
caller's batch size, seed, device, epoch cap) and then over explicit overrides.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from nas.training.data import DataSplits
from nas.training.train import TrainConfig, TrainReport, train
from search_spaces.registry import Registry

RECIPES: Registry[dict[str, Any]] = Registry("training recipe")
# after pruning or quantization, with distillation from the float model (the caller's teacher):
# the recipe of `nas compress` and of the compression benchmark
RECIPES.add("finetune", {"optimizer": "adamw", "lr": 1e-3})
# search_quality's search trials: batch 16 gives a 2-epoch trial on 800 images enough steps to
# leave chance accuracy (batch 64 does not); on the CPU, whose budget and timings these are
RECIPES.add("proxy", {"epochs": 2, "batch_size": 16, "device": "cpu"})
# the final training of every network a benchmark compares (searched or zoo), from scratch: the
# CIFAR recipe (crop + flip, label smoothing 0.1, weight decay 5e-4, cosine); 12 epochs is what a
# 2-core CPU affords per network (BENCHMARKS.md, search quality, measures what longer runs add)
RECIPES.add("final", {"epochs": 12, "batch_size": 64, "augment": "crop-flip", "label_smoothing": 0.1,
                      "weight_decay": 5e-4})


def recipe(name: str, base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """`base` (default: `TrainConfig()`) with recipe `name`'s fields, then `overrides`, set."""
    return replace(base or TrainConfig(), **{**RECIPES.get(name), **overrides})


def distilled_finetune(model: nn.Module, teacher: nn.Module, data: DataSplits, base: TrainConfig | None = None,
                       **overrides: Any) -> TrainReport:
    """The `finetune` recipe over `base`, distilling from `teacher` (`DistillationLoss`: T=4,
    alpha=0.9), with the test split evaluated at the end."""
    from compress.distill import DistillationLoss  # deferred: `compress` costs a second to import

    return train(model, data, recipe("finetune", base, **overrides), teacher=teacher,
                 distill_loss=DistillationLoss(), evaluate_test=True)
