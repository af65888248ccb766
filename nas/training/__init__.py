

from nas.training.data import DataSplits, load_dataset
from nas.training.recipes import RECIPES, distilled_finetune, recipe
from nas.training.train import TrainConfig, TrainReport, evaluate, train

__all__ = ["RECIPES", "DataSplits", "TrainConfig", "TrainReport", "distilled_finetune", "evaluate", "load_dataset", "recipe",
           "train"]
