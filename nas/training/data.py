"""Datasets for search trials, retraining and fine-tuning, all materialised as in-memory tensors.

Every loader returns a :class:`DataSplits`: float32 NCHW images, resized to the requested
resolution and normalised per channel with the *train* split's mean and std, and int64 labels,
all on CPU. Keeping everything in tensors makes a trial's input pipeline free (no decoding, no
workers) and exactly repeatable, which is what a search over hundreds of short trials needs.

Accepted names (see :data:`ACCEPTED_FORMS`):

- ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (the default; no download).
- ``cifar10:PATH`` -- an ``.npz`` with x_train/y_train/x_test/y_test, or a torchvision CIFAR-10 root.
- ``imagefolder:PATH`` -- train/ + val/ (+ optional test/) class folders, or one class folder.
- ``synthetic`` / ``synthetic:N`` -- a small deterministic learnable dataset for tests.
- ``nb201:cifar10|cifar100|imagenet16[:12ep]`` -- not images but NAS-Bench-201's table
  (`predictors.tabular.NB201Dataset`): a trial is answered from it instead of trained. Returned
  as that oracle, not as `DataSplits`; its resolution is the data set's (32, 32, 16).

Splitting rules (all deterministic for a seed, stratified by class):

- ``val_fraction`` is the share of the *training pool* held out for validation. Sources without a
  test split (digits, a single image folder) first hold out 20% of everything as test, then
  ``val_fraction`` of the rest as val: 1797 digits -> 1294 / 144 / 359 for every seed.
- ``imagefolder`` with train/ and val/ uses those folders as they are (``val_fraction`` unused);
  without test/, 20% of train/ is carved out as test.
- ``limit`` caps the train split only (a stratified subset); val and test keep their size so
  accuracies stay comparable across limits. For ``synthetic`` it sets the train size instead, and
  val/test are each a quarter of it (``val_fraction`` does not apply).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from search_spaces.errors import DatasetError, InputFileError, OptionError
from nas.training.cifar10 import cifar10_arrays
from predictors.tabular import TabularDataset

__all__ = ["ACCEPTED_FORMS", "DataSplits", "absolute_dataset", "is_tabular", "load_dataset"]

logger = logging.getLogger(__name__)

ACCEPTED_FORMS = (
    "digits",
    "synthetic",
    "synthetic:N (N >= 2 classes)",
    "cifar10:PATH (an .npz with x_train/y_train/x_test/y_test, or a torchvision CIFAR-10 root)",
    "imagefolder:PATH (train/ and val/ [and test/] class folders, or a single class folder)",
    "nb201:cifar10|cifar100|imagenet16[:12ep] (answered from the NAS-Bench-201 table, not trained)",
)

TABULAR_KINDS = ("nb201",)  # dataset names answered from a table, not trained on
TEST_FRACTION = 0.2  # held out as test where the source has no test split of its own
SYNTHETIC_DEFAULT_TRAIN = 512
_RESIZE_CHUNK = 2048  # images per interpolate call: bounds peak memory on big sets
_WARN_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class DataSplits:
    """Train/val/test tensors (CPU, float32 NCHW normalised, int64 labels) and what they are.

    ``mean``/``std`` are the per-channel statistics used to normalise (computed on the train
    split, in the [0, 1] pixel scale) -- an exported model needs them for its preprocessing.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    resolution: int
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def calibration_batches(self, seed: int, images: int = 256, batch: int = 64) -> list[Tensor]:
        """`images` training images drawn at random, in batches: the splits may be grouped by
        class, so the first N would be one or two classes."""
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))[:images]
        return list(self.train.tensors[0][order].split(batch))


def is_tabular(name: str) -> bool:
    """Whether dataset `name` is a table of results (`nb201:...`) rather than images."""
    return str(name).partition(":")[0] in TABULAR_KINDS


def load_dataset(
    name: str,
    resolution: int,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
    tabular: bool = False,
) -> DataSplits | TabularDataset:
    """Load ``name`` (one of :data:`ACCEPTED_FORMS`) at ``resolution`` x ``resolution``.

    A tabular name (``nb201:...``) gives its `TabularDataset` where the caller can use one
    (``tabular=True``: the search's trials; ``limit`` and ``val_fraction`` do not apply and
    ``resolution`` must be the data set's own); any other caller (training, export calibration,
    fine-tunes) gets a `DatasetError`: a table holds no images.

    Nothing is ever downloaded and no user file is unpickled: ``.npz`` files are read with
    ``allow_pickle=False``. (A torchvision CIFAR-10 root is read by torchvision, which checks
    each batch file's MD5 against the official archive before unpickling it.)
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise OptionError(f"resolution={resolution!r} must be a positive int (e.g. 32)")
    if not 0.0 < val_fraction < 1.0:
        raise OptionError(f"val_fraction={val_fraction!r} must be in (0, 1), e.g. 0.1")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"limit={limit!r} must be None or a positive int")

    kind, _, argument = name.partition(":")
    rng = np.random.default_rng(seed)
    if kind == "digits" and not argument:
        x_pool, y_pool = _digits_arrays()
        splits = _three_way(x_pool, y_pool, None, None, rng, val_fraction)
        canonical, num_classes, grey = "digits", 10, True
    elif kind == "synthetic":
        num_classes = _parse_class_count(argument, name)
        return _synthetic(num_classes, resolution, seed, limit, f"synthetic:{num_classes}")
    elif kind == "cifar10" and argument:
        x_train, y_train, x_test, y_test = cifar10_arrays(Path(argument))
        splits = _three_way(x_train, y_train, x_test, y_test, rng, val_fraction)
        canonical, num_classes, grey = name, 10, False
    elif kind == "imagefolder" and argument:
        return _imagefolder(Path(argument), resolution, rng, val_fraction, limit, name)
    elif kind == "nb201" and argument:
        if not tabular:
            raise DatasetError(f"{name}: a table of trained results, not images; it can answer search trials "
                               "but nothing here can train or calibrate on it")
        return _nb201(argument, resolution)
    else:
        raise DatasetError(f"unknown dataset {name!r}; accepted forms: " + "; ".join(ACCEPTED_FORMS))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
    if limit is not None and limit < len(y_tr):
        keep = _stratified_take(y_tr, limit, rng)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    return _finish([(x_tr, y_tr), (x_va, y_va), (x_te, y_te)], resolution, num_classes, canonical, grey)


def absolute_dataset(name: str) -> str:
    """``name`` with its PATH made absolute, for a process that runs in another working directory."""
    kind, separator, argument = name.partition(":")
    return f"{kind}:{Path(argument).resolve()}" if separator and kind in ("cifar10", "imagefolder") else name


def _nb201(argument: str, resolution: int) -> TabularDataset:
    from predictors.tabular.nb201 import parse_nb201_dataset

    dataset = parse_nb201_dataset(argument)
    if resolution != dataset.resolution:
        raise DatasetError(f"{dataset.name}: NB201 trained this data set at {dataset.resolution}x{dataset.resolution}; "
                           f"pass --resolution {dataset.resolution} (got {resolution})")
    return dataset


# ---------------------------------------------------------------- splitting


def _stratified_take(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``count`` items drawn per class in proportion to class size.

    Per-class quotas use the largest-remainder rule so the total is exactly ``count``
    (sklearn's splitter refuses tiny sets with more classes than held-out items; this does not).
    """
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (count / len(labels))
    taken = np.floor(quotas).astype(np.int64)
    shortfall = count - int(taken.sum())
    # stable sort: ties go to the lower class id, so the result depends on the seed only
    order = np.argsort(-(quotas - taken), kind="stable")
    taken[order[:shortfall]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, taken, strict=True)]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def _split_off(labels: np.ndarray, fraction: float, rng: np.random.Generator,
               what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) sorted index arrays; at least one item on each side."""
    n = len(labels)
    if n < 2:
        raise DatasetError(f"cannot split {n} item(s) into train and {what}: need at least 2")
    held = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    held_out = _stratified_take(labels, held, rng)
    return np.setdiff1d(np.arange(n), held_out), held_out


_Arrays = tuple[np.ndarray, np.ndarray]


def _three_way(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None,
               rng: np.random.Generator, val_fraction: float) -> tuple[_Arrays, _Arrays, _Arrays]:
    """Carve test (when the source has none) and then val out of the training pool."""
    if x_test is None or y_test is None:
        keep, val, test = _pool_indices(y_train, rng, val_fraction)
        x_test, y_test = x_train[test], y_train[test]
    else:
        keep, val = _split_off(y_train, val_fraction, rng, "val")
    return (x_train[keep], y_train[keep]), (x_train[val], y_train[val]), (x_test, y_test)


def _pool_indices(labels: np.ndarray, rng: np.random.Generator, val_fraction: float) -> tuple[np.ndarray, ...]:
    """(train, val, test) indices of a source without a test split: test first, then val of the rest."""
    pool, test = _split_off(labels, TEST_FRACTION, rng, "test")
    keep, val = _split_off(labels[pool], val_fraction, rng, "val")
    return pool[keep], pool[val], test


# ---------------------------------------------------------------- tensors


def _resize(images: Tensor, resolution: int) -> Tensor:
    """float32 NCHW at ``resolution``; uint8 input is scaled to [0, 1] first."""
    out_of = images.shape[-2:]
    chunks = []
    for chunk in images.split(_RESIZE_CHUNK):
        chunk = chunk.float().div_(255.0) if chunk.dtype == torch.uint8 else chunk.float()
        if tuple(out_of) != (resolution, resolution):
            # antialias only when shrinking: plain bilinear downsampling aliases badly
            shrink = resolution < min(out_of)
            chunk = F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                  antialias=shrink)
        chunks.append(chunk)
    if not chunks:
        return torch.empty((0, images.shape[1], resolution, resolution))
    return torch.cat(chunks)


def _finish(splits: list[tuple[np.ndarray | Tensor, np.ndarray | Tensor]], resolution: int, num_classes: int,
            name: str, grey_to_rgb: bool = False) -> DataSplits:
    """Resize NCHW images, (optionally) repeat grey to 3 channels, normalise, wrap."""
    images, labels = [], []
    for x, y in splits:
        x = _resize(torch.as_tensor(np.ascontiguousarray(x)), resolution)
        if grey_to_rgb:
            x = x.repeat(1, 3, 1, 1)  # after resizing: a third of the interpolation work
        images.append(x)
        labels.append(torch.as_tensor(np.asarray(y), dtype=torch.int64))
    total = sum(x.numel() * 4 for x in images)
    if total > _WARN_BYTES:
        logger.warning("%s at %dpx holds %.1f GiB in memory", name, resolution, total / 1024**3)
    var, mean = torch.var_mean(images[0], dim=(0, 2, 3), correction=0)
    std = var.sqrt().clamp_min(1e-6)  # a constant channel must not divide by zero
    for x in images:
        x.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])
    train, val, test = (TensorDataset(x, y) for x, y in zip(images, labels, strict=True))
    logger.info("%s: %d train / %d val / %d test at %dpx", name, len(train), len(val), len(test), resolution)
    return DataSplits(train=train, val=val, test=test, num_classes=num_classes, in_channels=images[0].shape[1],
                      resolution=resolution, name=name, mean=tuple(mean.tolist()), std=tuple(std.tolist()))


# ---------------------------------------------------------------- sources


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values are 0..16 (17 levels), so divide by 16, not 15 or 255, to land in [0, 1]
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, bunch.target.astype(np.int64)


def _parse_class_count(argument: str, name: str) -> int:
    if not argument:
        return 10
    try:
        count = int(argument)
    except ValueError:
        count = 0
    if count < 2:
        raise DatasetError(f"dataset {name!r}: N in 'synthetic:N' must be an int >= 2")
    return count


def _synthetic(num_classes: int, resolution: int, seed: int, limit: int | None, name: str) -> DataSplits:
    """Class prototypes (smooth random 3-channel patterns) plus per-image Gaussian noise.

    Smooth prototypes (a 4x4 grid upsampled) keep the task learnable at any resolution by a
    small CNN, and the noise keeps it from being solved in a single step.
    """
    generator = torch.Generator().manual_seed(seed)
    grid = min(4, resolution)
    prototypes = torch.randn(num_classes, 3, grid, grid, generator=generator)
    prototypes = F.interpolate(prototypes, size=(resolution, resolution), mode="bilinear",
                               align_corners=False)
    # a per-class colour survives global pooling, so even a stem + pool + linear can learn it
    prototypes += torch.randn(num_classes, 3, 1, 1, generator=generator)
    n_train = limit if limit is not None else SYNTHETIC_DEFAULT_TRAIN
    n_eval = max(num_classes, n_train // 4)
    splits = []
    for size in (n_train, n_eval, n_eval):
        labels = torch.arange(size) % num_classes  # balanced
        labels = labels[torch.randperm(size, generator=generator)]
        noise = torch.randn(size, 3, resolution, resolution, generator=generator)
        splits.append((prototypes[labels] + 1.5 * noise, labels))
    return _finish(splits, resolution, num_classes, name)


def _imagefolder(root: Path, resolution: int, rng: np.random.Generator, val_fraction: float, limit: int | None,
                 name: str) -> DataSplits:
    """Decode only the images that end up in a split; each is squashed to a square."""
    from torchvision import transforms

    if not root.is_dir():
        raise InputFileError(
            f"imagefolder path {str(root)!r} is not a directory; expected train/ and val/ "
            f"(optional test/) class folders, or a single folder of class folders"
        )
    transform = transforms.Compose([transforms.Resize((resolution, resolution)), transforms.PILToTensor()])
    if (root / "train").is_dir() and (root / "val").is_dir():
        picks = _picks_of_split_folders(root, transform, rng)
    else:  # one folder of class folders: split it like digits
        folder = _open_image_folder(root, transform)
        labels = np.asarray(folder.targets, dtype=np.int64)
        picks = [(folder, part) for part in _pool_indices(labels, rng, val_fraction)]
    train_folder, train_idx = picks[0]
    if limit is not None and limit < len(train_idx):
        train_labels = np.asarray(train_folder.targets, dtype=np.int64)[train_idx]
        picks[0] = (train_folder, train_idx[_stratified_take(train_labels, limit, rng)])
    return _finish(_decode_picks(picks, resolution), resolution, len(picks[0][0].classes), name)


Pick = tuple[Any, np.ndarray]  # (an ImageFolder, the indices of its images in one split)


def _open_image_folder(folder: Path, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as error:
        raise InputFileError(
            f"imagefolder {str(folder)!r}: {error}; expected one subfolder per class "
            f"holding image files"
        ) from error


def _picks_of_split_folders(root: Path, transform: Any, rng: np.random.Generator) -> list[Pick]:
    """train/, val/ and test/ as given; without test/, a test split is carved from train/."""
    folders = {part: _open_image_folder(root / part, transform) for part in ("train", "val", "test")
               if (root / part).is_dir()}
    for part, folder in folders.items():
        if folder.classes != folders["train"].classes:
            raise DatasetError(
                f"imagefolder {str(root)!r}: {part}/ classes {folder.classes} differ from "
                f"train/ classes {folders['train'].classes}"
            )
    train_labels = np.asarray(folders["train"].targets, dtype=np.int64)
    if "test" in folders:
        train_idx = np.arange(len(train_labels))
        test_pick = (folders["test"], np.arange(len(folders["test"])))
    else:  # val/ stays the val split
        train_idx, test_idx = _split_off(train_labels, TEST_FRACTION, rng, "test")
        test_pick = (folders["train"], test_idx)
    return [(folders["train"], train_idx), (folders["val"], np.arange(len(folders["val"]))), test_pick]


def _decode_picks(picks: list[Pick], resolution: int) -> list[tuple[Tensor, np.ndarray]]:
    splits = []
    for folder, indices in picks:
        images = torch.empty((len(indices), 3, resolution, resolution), dtype=torch.uint8)
        labels_out = np.empty(len(indices), dtype=np.int64)
        for row, index in enumerate(indices):
            images[row], labels_out[row] = folder[int(index)]
        splits.append((images, labels_out))
    return splits
