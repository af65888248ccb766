"""CIFAR-10 readers for `nas.training.data`: an .npz of uint8 NHWC arrays (read without pickle) or a
torchvision CIFAR-10 root (its batches are checked against the official archive's digests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_spaces.errors import DatasetError, InputFileError

CIFAR_KEYS = ("x_train", "y_train", "x_test", "y_test")


def cifar10_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not path.exists():
        raise InputFileError(
            f"cifar10 path {str(path)!r} does not exist; expected an .npz file with "
            f"{', '.join(CIFAR_KEYS)} or a torchvision CIFAR-10 root directory"
        )
    if path.is_dir():
        return cifar10_torchvision(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:  # not an .npz, or one holding pickled objects
        raise DatasetError(f"cifar10 path {str(path)!r} is not a readable .npz of arrays ({error})") from None
    def bad(message: str) -> DatasetError:
        return DatasetError(f"cifar10 npz {str(path)!r}{message}")

    with archive:
        missing = [key for key in CIFAR_KEYS if key not in archive.files]
        if missing:
            raise bad(f" lacks key(s) {missing}; expected {list(CIFAR_KEYS)}, found {archive.files}")
        arrays = {key: archive[key] for key in CIFAR_KEYS}
    for part in ("train", "test"):
        x_key, y_key = f"x_{part}", f"y_{part}"
        x, y = arrays[x_key], arrays[y_key]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise bad(f": {x_key} is {x.dtype} {x.shape}; expected uint8 of shape (N, 32, 32, 3) (NHWC)")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # Keras stores labels as (N, 1)
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
            raise bad(f": {y_key} is {y.dtype} {y.shape}; expected integer labels of shape ({len(x)},)")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise bad(f": {y_key} has labels in [{y.min()}, {y.max()}]; expected 0..9")
        arrays[y_key] = y.astype(np.int64)
    # NHWC -> NCHW views; the split's fancy indexing makes the contiguous copies
    return (arrays["x_train"].transpose(0, 3, 1, 2), arrays["y_train"],
            arrays["x_test"].transpose(0, 3, 1, 2), arrays["y_test"])


def cifar10_torchvision(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=False)
        test = CIFAR10(str(root), train=False, download=False)
    except RuntimeError as error:
        raise InputFileError(
            f"cifar10 root {str(root)!r} holds no intact CIFAR-10 python batches "
            f"(expected {str(root / 'cifar-10-batches-py')!r} from the official archive; "
            f"nothing is downloaded): {error}"
        ) from error
    return (np.asarray(train.data).transpose(0, 3, 1, 2),
            np.asarray(train.targets, dtype=np.int64),
            np.asarray(test.data).transpose(0, 3, 1, 2),
            np.asarray(test.targets, dtype=np.int64))
