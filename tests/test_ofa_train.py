"""Training the elastic supernet (sandwich rule, in-place distillation), its epoch checkpoint and
resume, BN re-calibration and the sub-network accuracy cache. The reduced proxyless space at
8 px on synthetic data, 2 epochs of 2 batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from proxyless_helpers import CLASSES, RESOLUTION, SmallProxylessSpace

import nas.oneshot.ofa_train as ofa_train
from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_eval import extract_model, recalibrate_bn, subnet_accuracy
from nas.oneshot.ofa_train import OFATrainConfig, load_supernet, train_supernet
from nas.rundir.records import RunDirError
from nas.training.data import load_dataset
from search_spaces.errors import DatasetError, OptionError


@pytest.fixture(scope="module")
def data():
    return load_dataset(f"synthetic:{CLASSES}", RESOLUTION, seed=0, limit=64)


CONFIG = OFATrainConfig(epochs=2, batch_size=8, max_batches_per_epoch=2, device="cpu", eval_calibration_images=16)


def fresh() -> ElasticSupernet:
    torch.manual_seed(0)
    return ElasticSupernet(SmallProxylessSpace())


def test_training_runs_two_epochs_and_checkpoints(data, tmp_path: Path) -> None:
    result = train_supernet(fresh(), data, CONFIG, tmp_path, progress=False)
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2] and result["epoch"] == 2
    for record in history:
        for key in ("loss_largest", "loss_smallest", "loss_random"):
            assert record[key] == pytest.approx(record[key]) and 0 < record[key] < 10  # finite, plausible
        assert 0 <= record["val_accuracy_smallest"] <= 1
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 2 and state["space"]["name"] == "proxyless-small"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer-e0002.pt", "state.json",
                                                          "supernet-e0002.safetensors"]
    loaded, _ = load_supernet(tmp_path)
    assert loaded.epoch == 2


def test_a_resumed_training_equals_an_uninterrupted_one(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = fresh()
    train_supernet(whole, data, CONFIG, tmp_path / "whole", progress=False)

    real_save = ofa_train.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(ofa_train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(fresh(), data, CONFIG, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(ofa_train, "save_checkpoint", real_save)
    resumed = ElasticSupernet(SmallProxylessSpace())  # other initial weights: the checkpoint replaces them
    result = train_supernet(resumed, data, CONFIG, tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(data, tmp_path: Path) -> None:
    train_supernet(fresh(), data, OFATrainConfig(**{**CONFIG.to_dict(), "epochs": 1}), tmp_path, progress=False)
    with pytest.raises(RunDirError, match=r"\(lr differ\)"):
        train_supernet(fresh(), data, OFATrainConfig(**{**CONFIG.to_dict(), "epochs": 1, "lr": 0.1}), tmp_path,
                       progress=False)


def test_bad_settings_and_data_are_refused(data) -> None:
    with pytest.raises(OptionError, match=r"OFATrainConfig.kd_weight=2: expected a float in \[0, 1\]"):
        OFATrainConfig(kd_weight=2)
    other = load_dataset(f"synthetic:{CLASSES}", 16, seed=0, limit=32)
    with pytest.raises(DatasetError, match="wants 8 px and 4 classes"):
        train_supernet(fresh(), other, CONFIG, Path("unused"), progress=False)


def test_bn_recalibration_sets_the_exact_statistics_of_the_images() -> None:
    model = extract_model(fresh(), SmallProxylessSpace().decode([0] * 5))
    images = torch.randn(12, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(3))
    norm = model.stem[0][1]
    assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
    recalibrate_bn(model, images, batch_size=4)
    with torch.no_grad():
        expected = model.stem[0][0](images).mean(dim=(0, 2, 3))
    assert torch.allclose(norm.running_mean, expected, atol=1e-5)
    assert norm.momentum == 0.1 and not model.training


def test_subnet_accuracy_is_cached_by_hash_and_epoch(data, tmp_path: Path) -> None:
    supernet = fresh()
    arch = supernet.smallest()
    cache = tmp_path / "accuracy.json"
    first = subnet_accuracy(supernet, arch, data, calibration_images=16, cache=cache, device="cpu")
    entry = json.loads(cache.read_text())[arch.content_hash()]
    assert entry["accuracy"] == first and entry["epoch"] == 0 and entry["arch"] == arch.to_dict()
    entry["accuracy"] = 0.125  # a hit returns the stored value without evaluating
    cache.write_text(json.dumps({arch.content_hash(): entry}))
    assert subnet_accuracy(supernet, arch, data, calibration_images=16, cache=cache, device="cpu") == 0.125
    again = subnet_accuracy(supernet, arch, data, calibration_images=16, cache=cache, device="cpu", epoch=1)
    assert again == first  # another epoch's weights: evaluated afresh
