"""`AccuracyPredictor`: the accuracy of a sub-network of a trained supernet, predicted from its
architecture alone, so that specialisation can score thousands of candidates per second.

After Once-for-All (Cai et al., ICLR 2020, Sec. 3.3): an MLP with 3 layers of 400 hidden units on
a one-hot encoding of the architecture, trained on measured (architecture, accuracy) pairs; OFA
reports 0.21% RMSE on ImageNet. Here the input is the one-hot of the space's canonical decision
vector (one block of columns per decision, as bananas encodes it), the model is a small ensemble
of such MLPs (`nas.strategies.bananas.MLPEnsemble`: one batched network, so an ensemble costs
little more than one member) whose mean is the prediction, and the targets are standardized.

`fit` also estimates the error on architectures it has not seen: k-fold cross-validation (each
fold's ensemble trained on the others and scored on it), stored with the model as `rmse`. The
model is saved as `<stem>.json` (settings, the space it encodes, scale, rmse) plus
`<stem>.safetensors` (the weights); nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.rundir.atomic import write_atomically
from nas.strategies.bananas import MLPEnsemble
from search_spaces.errors import InputFileError, OptionError, UserError
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

__all__ = ["AccuracyPredictor", "PredictorConfig", "PredictorFileError", "one_hot"]

FORMAT = "hwnas-accuracy-predictor"
FORMAT_VERSION = 1


class PredictorFileError(UserError, ValueError):
    """A saved accuracy predictor is unreadable or belongs to another search space."""


@dataclass(frozen=True)
class PredictorConfig:
    # (folds + 1) trainings of `epochs` full-batch steps: on 200 samples at 400 units a step costs
    # about 0.7 GFLOP per member (forward and backward), so a fit is 4 x 100 steps of 2 members
    members: int = 2  # MLPs in the ensemble
    hidden: int = 400  # OFA: 400 units per hidden layer
    layers: int = 3  # OFA: 3 layers
    epochs: int = 100  # full-batch Adam steps
    lr: float = 3e-3
    weight_decay: float = 1e-4
    folds: int = 3  # k of the k-fold estimate of the held-out RMSE (0: no estimate)

    def __post_init__(self) -> None:
        for name in ("members", "hidden", "layers", "epochs"):
            if getattr(self, name) < 1:
                raise OptionError(f"predictor.{name}={getattr(self, name)} must be >= 1")
        if self.folds != 0 and self.folds < 2:
            raise OptionError(f"predictor.folds={self.folds} must be 0 (no estimate) or >= 2")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise OptionError(f"predictor.lr={self.lr} must be a finite number > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise OptionError(f"predictor.weight_decay={self.weight_decay} must be a finite number >= 0")


def one_hot(vectors: Sequence[Sequence[int]], cardinalities: Sequence[int]) -> torch.Tensor:
    """Canonical vectors -> float32 one-hot rows, one block of columns per decision."""
    offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]]).astype(int)
    x = np.zeros((len(vectors), int(sum(cardinalities))), dtype=np.float32)
    if len(vectors):
        x[np.arange(len(vectors))[:, None], offsets[None, :] + np.asarray(vectors, dtype=int)] = 1.0
    return torch.from_numpy(x)


def space_identity(space: SearchSpace) -> dict[str, Any]:
    """What a saved predictor must agree on with the space it is used with."""
    return {"name": space.name, "resolution": space.resolution, "num_classes": space.num_classes,
            "decisions": [[d.name, len(d.options)] for d in space.decisions]}


class AccuracyPredictor:
    """An MLP ensemble from one-hot canonical vectors to accuracy (in the units it was fitted on)."""

    def __init__(self, space: SearchSpace, config: PredictorConfig | None = None) -> None:
        self.space = space
        self.config = config or PredictorConfig()
        self.cardinalities = list(space.cardinalities)
        self.model: MLPEnsemble | None = None
        self.mean, self.std = 0.0, 1.0  # the targets' scale: the ensemble learns standardized values
        self.rmse: float | None = None  # k-fold held-out RMSE, accuracy units
        self.samples = 0
        self.seed = 0
        self.provenance: dict[str, Any] = {}  # what the accuracies came from (the supernet's epoch...), saved as is

    # -- fitting -----------------------------------------------------------------------------------
    def _train(self, vectors: list[list[int]], y: np.ndarray, seed: int) -> tuple[MLPEnsemble, float, float]:
        config = self.config
        mean, std = float(y.mean()), float(y.std())
        std = std if std > 1e-12 else 1.0
        generator = torch.Generator().manual_seed(seed % 2**63)
        model = MLPEnsemble(config.members, int(sum(self.cardinalities)), config.hidden, config.layers, generator)
        target = torch.tensor((y - mean) / std, dtype=torch.float32)
        model.fit(one_hot(vectors, self.cardinalities), target, config.epochs, config.lr, config.weight_decay)
        return model, mean, std

    def fit(self, archs: Sequence[ArchSpec], accuracies: Sequence[float], seed: int = 0) -> AccuracyPredictor:
        """Fit on `archs` (networks of the space) and their measured `accuracies`; the folds are a
        seeded shuffle, so the same data and seed give the same model and the same rmse."""
        if len(archs) != len(accuracies):
            raise OptionError(f"predictor.fit: {len(archs)} archs but {len(accuracies)} accuracies")
        y = np.asarray(accuracies, dtype=np.float64)
        if len(y) < 2 or not np.all(np.isfinite(y)):
            raise OptionError(f"predictor.fit: needs >= 2 finite accuracies, got {len(y)} "
                              f"({int(np.sum(~np.isfinite(y)))} not finite)")
        vectors = [[int(v) for v in self.space.encode(arch)] for arch in archs]
        folds = min(self.config.folds, len(y))
        if folds >= 2:
            order = np.random.default_rng(seed).permutation(len(y))
            errors = np.empty(len(y))
            for fold, held in enumerate(np.array_split(order, folds)):
                kept = np.setdiff1d(order, held)
                model, mean, std = self._train([vectors[i] for i in kept], y[kept], seed + 1 + fold)
                guess = model.predict(one_hot([vectors[i] for i in held], self.cardinalities)).mean(axis=0)
                errors[held] = guess * std + mean - y[held]
            self.rmse = float(np.sqrt(np.mean(errors**2)))
        self.model, self.mean, self.std = self._train(vectors, y, seed)
        self.samples, self.seed = len(y), seed
        return self

    # -- predicting --------------------------------------------------------------------------------
    def predict_vectors(self, vectors: Sequence[Sequence[int]]) -> np.ndarray:
        """Predicted accuracy of each canonical vector (the ensemble's mean)."""
        if self.model is None:
            raise RuntimeError("AccuracyPredictor: fit() or load() before predict")
        return self.model.predict(one_hot(vectors, self.cardinalities)).mean(axis=0) * self.std + self.mean

    def predict(self, archs: Sequence[ArchSpec]) -> np.ndarray:
        return self.predict_vectors([[int(v) for v in self.space.encode(arch)] for arch in archs])

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "space": space_identity(self.space),
                "config": asdict(self.config), "mean": self.mean, "std": self.std, "rmse": self.rmse,
                "samples": self.samples, "seed": self.seed, "provenance": self.provenance}

    def save(self, stem: str | os.PathLike) -> tuple[Path, Path]:
        """Write `<stem>.json` and `<stem>.safetensors`; returns both paths."""
        from safetensors.torch import save as serialise

        if self.model is None:
            raise RuntimeError("AccuracyPredictor: nothing to save before fit()")
        stem = Path(stem)
        json_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        write_atomically(weights_path, serialise({"theta": self.model.theta.detach().contiguous().clone()}))
        write_atomically(json_path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return json_path, weights_path

    @classmethod
    def load(cls, stem: str | os.PathLike, space: SearchSpace) -> AccuracyPredictor:
        """Read a predictor `save` wrote; refuses one fitted on another space (`PredictorFileError`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        stem = Path(stem)
        json_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        for path in (json_path, weights_path):
            if not path.is_file():
                raise InputFileError(f"accuracy predictor: {path} does not exist (fit one first)")
        try:
            data = json.loads(json_path.read_text())
            config = PredictorConfig(**data["config"])
        except (ValueError, KeyError, TypeError) as error:
            raise PredictorFileError(f"{json_path}: not an accuracy predictor file ({error})") from None
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise PredictorFileError(f"{json_path}: format {data.get('format')!r} v{data.get('format_version')}, "
                                     f"expected {FORMAT!r} v{FORMAT_VERSION}")
        if data.get("space") != space_identity(space):
            raise PredictorFileError(f"{json_path}: fitted on space {data.get('space', {}).get('name')!r} with other "
                                     f"decisions or input size than {space.name!r} here; fit it again")
        predictor = cls(space, config)
        predictor.model = MLPEnsemble(config.members, int(sum(predictor.cardinalities)), config.hidden,
                                      config.layers, torch.Generator().manual_seed(0))
        try:
            theta = load_file(str(weights_path))["theta"]
        except (SafetensorError, KeyError, OSError) as error:
            raise PredictorFileError(f"{weights_path}: unreadable predictor weights ({error})") from None
        if theta.shape != predictor.model.theta.shape:
            raise PredictorFileError(f"{weights_path}: {tuple(theta.shape)} weights, expected "
                                     f"{tuple(predictor.model.theta.shape)} for the settings in {json_path.name}")
        predictor.model.theta = theta.to(torch.float32).requires_grad_()
        predictor.mean, predictor.std = float(data["mean"]), float(data["std"])
        predictor.rmse = None if data.get("rmse") is None else float(data["rmse"])
        predictor.samples, predictor.seed = int(data["samples"]), int(data["seed"])
        predictor.provenance = dict(data.get("provenance") or {})
        return predictor
