"""Dataset loading: exact splits, determinism, normalisation and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas.training.data import DataSplits, load_dataset


@pytest.fixture(scope="module")
def digits8() -> DataSplits:
    return load_dataset("digits", 8)


def _fake_cifar(path: Path, n_train: int = 20, n_test: int = 10, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % 10,
    }
    arrays.update(overrides)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    np.savez(path, **arrays)
    return path


def test_digits_exact_split_sizes(digits8: DataSplits) -> None:
    # 20% of 1797 held out as test (359), then 10% of the remaining 1438 as val (144)
    sizes = (len(digits8.train), len(digits8.val), len(digits8.test))
    assert sizes == (1294, 144, 359)
    assert sum(sizes) == 1797
    assert digits8.num_classes == 10 and digits8.in_channels == 3 and digits8.resolution == 8
    assert digits8.name == "digits"
    images, labels = digits8.train.tensors
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape == (1294, 3, 8, 8)
    # stratified: every class present in every split, in near-equal numbers
    for split in (digits8.train, digits8.val, digits8.test):
        counts = torch.bincount(split.tensors[1], minlength=10)
        assert int(counts.min()) >= 0.9 * int(counts.max())


def test_digits_normalised_with_train_stats(digits8: DataSplits) -> None:
    images = digits8.train.tensors[0]
    per_channel = images.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(dim=1, correction=0), torch.ones(3), atol=1e-4)
    # grey digits repeated to 3 identical channels
    assert torch.equal(images[:, 0], images[:, 2])
    assert len(digits8.mean) == 3 and digits8.std[0] > 0


def test_digits_same_seed_identical_other_seed_differs(digits8: DataSplits) -> None:
    again = load_dataset("digits", 8, seed=0)
    for first, second in zip(
        (digits8.train, digits8.val, digits8.test), (again.train, again.val, again.test)
    ):
        assert torch.equal(first.tensors[0], second.tensors[0])
        assert torch.equal(first.tensors[1], second.tensors[1])
    other = load_dataset("digits", 8, seed=1)
    assert len(other.test) == 359  # sizes do not depend on the seed, membership does
    assert not torch.equal(other.test.tensors[0], digits8.test.tensors[0])


def test_digits_resolution_and_limit() -> None:
    data = load_dataset("digits", 16, limit=100)
    assert data.train.tensors[0].shape == (100, 3, 16, 16)
    assert len(data.val) == 144 and len(data.test) == 359  # limit caps train only
    assert torch.bincount(data.train.tensors[1], minlength=10).min() >= 9


def test_synthetic_deterministic_and_sized() -> None:
    first = load_dataset("synthetic", 8, limit=40)
    second = load_dataset("synthetic", 8, limit=40)
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])
    assert torch.equal(first.test.tensors[1], second.test.tensors[1])
    assert (len(first.train), len(first.val), len(first.test)) == (40, 10, 10)
    assert first.name == "synthetic:10" and first.num_classes == 10
    three = load_dataset("synthetic:3", 4, seed=5)
    assert three.num_classes == 3 and three.train.tensors[0].shape == (512, 3, 4, 4)
    assert int(three.train.tensors[1].max()) == 2
    other = load_dataset("synthetic", 8, limit=40, seed=1)
    assert not torch.equal(other.train.tensors[0], first.train.tensors[0])


def test_cifar10_npz(tmp_path: Path) -> None:
    path = _fake_cifar(tmp_path / "tiny.npz")
    data = load_dataset(f"cifar10:{path}", 32)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 10)
    assert data.train.tensors[0].shape == (18, 3, 32, 32)
    assert data.num_classes == 10
    small = load_dataset(f"cifar10:{path}", 16)
    assert small.test.tensors[0].shape == (10, 3, 16, 16)
    # labels stored Keras-style as (N, 1) are accepted
    keras = _fake_cifar(tmp_path / "keras.npz", y_train=(np.arange(20) % 10)[:, None])
    assert len(load_dataset(f"cifar10:{keras}", 32).train) == 18


def test_cifar10_npz_missing_key(tmp_path: Path) -> None:
    path = _fake_cifar(tmp_path / "nokey.npz", y_test=None)
    with pytest.raises(ValueError, match="y_test"):
        load_dataset(f"cifar10:{path}", 32)


def test_cifar10_npz_wrong_dtype_and_shape(tmp_path: Path) -> None:
    floats = _fake_cifar(tmp_path / "float.npz", x_train=np.zeros((20, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"x_train is float32.*expected uint8"):
        load_dataset(f"cifar10:{floats}", 32)
    nchw = _fake_cifar(tmp_path / "nchw.npz", x_test=np.zeros((10, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"x_test.*\(N, 32, 32, 3\)"):
        load_dataset(f"cifar10:{nchw}", 32)
    labels = _fake_cifar(tmp_path / "labels.npz", y_train=np.full(20, 0.5))
    with pytest.raises(ValueError, match="y_train"):
        load_dataset(f"cifar10:{labels}", 32)


def test_cifar10_missing_path_and_empty_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_dataset(f"cifar10:{missing}", 32)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset(f"cifar10:{tmp_path}", 32)


def test_imagefolder_single_folder(tmp_path: Path) -> None:
    from PIL import Image

    for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.new("RGB", (12, 10), colour).save(tmp_path / label / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", 8)
    assert (len(data.train), len(data.val), len(data.test)) == (14, 2, 4)
    assert data.num_classes == 2 and data.train.tensors[0].shape == (14, 3, 8, 8)


def test_unknown_name_lists_accepted_forms() -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", 8)
    message = str(info.value)
    for form in ("digits", "synthetic:N", "cifar10:PATH", "imagefolder:PATH"):
        assert form in message
    with pytest.raises(ValueError, match="accepted forms"):
        load_dataset("cifar10", 8)  # a path is required


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 8, "val_fraction": 1.0}, "val_fraction"),
        ({"resolution": 8, "limit": 0}, "limit"),
    ],
)
def test_bad_arguments_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        load_dataset("synthetic", **kwargs)


def test_bad_synthetic_class_count() -> None:
    with pytest.raises(ValueError, match="synthetic:N"):
        load_dataset("synthetic:1", 8)
