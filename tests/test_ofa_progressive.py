"""Progressive shrinking (`OFATrainConfig.schedule="progressive"`): how epochs split into phases,
which sub-networks each phase samples (the reduced proxyless space: first kernel x two stages of
1-2 layers of kernel {3, 5, 7} x expansion {3, 6}), a resume across a phase boundary equal to an
uninterrupted run, and clear errors. 8 px synthetic data, 2 batches per epoch."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from proxyless_helpers import CLASSES, RESOLUTION, SmallProxylessSpace
from typer.testing import CliRunner

import nas.oneshot.ofa_train as ofa_train
from nas.commands import supernet as supernet_command
from nas.oneshot.elastic_fbnet import FBNetAdapter
from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_schedule import epoch_plan, phase_epochs
from nas.oneshot.ofa_strategy import OnceForAllOptions, OnceForAllSearcher
from nas.oneshot.ofa_train import OFATrainConfig, train_supernet
from nas.training.data import load_dataset
from search_spaces.errors import OptionError

KERNEL, DEPTH, EXPAND = frozenset({"kernel"}), frozenset({"kernel", "depth"}), frozenset({"kernel", "depth", "expand"})


def fresh() -> ElasticSupernet:
    torch.manual_seed(0)
    return ElasticSupernet(SmallProxylessSpace())


def shape(supernet: ElasticSupernet, arch) -> tuple:
    """Per stage the (kernel, expansion) of each present layer."""
    return tuple(tuple((b.kernel, b.expand_ratio) for b in layers) for layers in supernet.adapter.layers_of(arch))


def test_epochs_split_over_the_phases_by_the_fractions() -> None:
    assert phase_epochs(10, (0.4, 0.2, 0.2, 0.2)) == [4, 2, 2, 2]
    assert phase_epochs(2, (0.25, 0.25, 0.25, 0.25)) == [1, 0, 1, 0]  # fewer epochs than phases: halves round up
    phases = fresh().phases()
    assert phases == [frozenset(), KERNEL, DEPTH, EXPAND]
    plans = [epoch_plan(e, 10, "progressive", phases, (0.4, 0.2, 0.2, 0.2)) for e in range(1, 11)]
    assert [p.phase for p in plans] == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert (plans[5].first_epoch, plans[5].cycle_epochs, plans[5].elastic) == (5, 2, KERNEL)
    sandwich = epoch_plan(7, 10, "sandwich", phases, None)
    assert (sandwich.elastic, sandwich.first_epoch, sandwich.cycle_epochs) == (None, 1, 10)


def test_each_phase_samples_exactly_its_free_dimensions() -> None:
    supernet = fresh()
    rng = np.random.default_rng(0)
    draws = {name: {shape(supernet, supernet.sample(rng, "network", elastic)) for _ in range(3000)}
             for name, elastic in (("largest", frozenset()), ("kernel", KERNEL), ("depth", DEPTH))}
    assert draws["largest"] == {(((7, 1.0),), ((7, 6.0),) * 2, ((7, 6.0),) * 2)}
    kernels = [(k, 6.0) for k in (3, 5, 7)]
    # every kernel, expansion 6, every layer present: 3 x 9 x 9 networks, all drawn
    assert draws["kernel"] == {(((f, 1.0),), (a, b), (c, d)) for f in (3, 5, 7)
                               for a in kernels for b in kernels for c in kernels for d in kernels}
    assert {len(layers) for s in draws["depth"] for layers in s[1:]} == {1, 2}
    assert {pair for s in draws["depth"] for layers in s[1:] for pair in layers} == set(kernels)
    assert shape(supernet, supernet.smallest(KERNEL)) == (((3, 1.0),), ((3, 6.0),) * 2, ((3, 6.0),) * 2)
    assert shape(supernet, supernet.smallest(DEPTH)) == (((3, 1.0),), ((3, 6.0),), ((3, 6.0),))
    assert supernet.smallest(EXPAND) == supernet.smallest()
    assert FBNetAdapter.layer_ops(frozenset()) == ["k5_e6"] and FBNetAdapter.layer_ops(KERNEL) == ["k3_e6", "k5_e6"]


@pytest.fixture(scope="module")
def data():
    return load_dataset(f"synthetic:{CLASSES}", RESOLUTION, seed=0, limit=64)


# one epoch per phase: largest, +kernel, +depth, +expansion
PROGRESSIVE = OFATrainConfig(epochs=4, batch_size=8, max_batches_per_epoch=2, device="cpu", eval_calibration_images=16,
                             schedule="progressive")


def test_a_resume_across_a_phase_boundary_equals_an_uninterrupted_run(data, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    whole = fresh()
    history = train_supernet(whole, data, PROGRESSIVE, tmp_path / "whole", progress=False)["history"]
    assert [(h["phase"], h["elastic"]) for h in history] == [(0, []), (1, ["kernel"]), (2, ["depth", "kernel"]),
                                                             (3, ["depth", "expand", "kernel"])]
    assert history[0]["loss_smallest"] is None and history[1]["loss_smallest"] > 0  # phase 0: the largest alone

    real_save = ofa_train.save_checkpoint

    def save_then_die(supernet, optimizer, config, epoch, *args, **kwargs):
        real_save(supernet, optimizer, config, epoch, *args, **kwargs)
        if epoch == 2:  # killed at the end of the kernel phase
            raise KeyboardInterrupt

    monkeypatch.setattr(ofa_train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(fresh(), data, PROGRESSIVE, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(ofa_train, "save_checkpoint", real_save)
    resumed = ElasticSupernet(SmallProxylessSpace())
    result = train_supernet(resumed, data, PROGRESSIVE, tmp_path / "resumed", progress=False)
    assert [h["phase"] for h in result["history"]] == [0, 1, 2, 3]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_schedules_are_refused_naming_the_field(data) -> None:
    with pytest.raises(OptionError, match=r"OFATrainConfig.schedule='fast': expected 'sandwich'"):
        OFATrainConfig(schedule="fast")
    with pytest.raises(OptionError, match=r"phase_fractions=\(0.5, 0.4\): expected a list of floats >= 0, one per "
                                          "phase, summing to 1"):
        OFATrainConfig(schedule="progressive", phase_fractions=(0.5, 0.4))
    with pytest.raises(OptionError, match=r"phase_fractions=\[0.5, 0.5\]: expected None unless schedule='progressive'"):
        OFATrainConfig(phase_fractions=[0.5, 0.5])
    assert OFATrainConfig(schedule="progressive", phase_fractions=[1, 0, 0, 0]).phase_fractions == (1.0, 0.0, 0.0, 0.0)
    two = OFATrainConfig(**{**PROGRESSIVE.to_dict(), "phase_fractions": (0.5, 0.5)})
    with pytest.raises(OptionError, match=r"phase_fractions has 2 entries; this space has 4 phases \(largest, "
                                          r"\+kernel, \+depth, \+expand\)"):
        train_supernet(fresh(), data, two, Path("unused"), progress=False)
    with pytest.raises(OptionError, match=r"strategy_options.schedule='fast'"):
        OnceForAllOptions(schedule="fast")


def test_the_once_for_all_strategy_passes_the_schedule_to_the_training() -> None:
    options = OnceForAllOptions(schedule="progressive", phase_fractions=[0.4, 0.2, 0.2, 0.2])  # as JSON gives it
    searcher = SimpleNamespace(context=SimpleNamespace(train=None), options=options, seed=0)
    config = OnceForAllSearcher.train_config(searcher)
    assert (config.schedule, config.phase_fractions) == ("progressive", (0.4, 0.2, 0.2, 0.2))


def test_cli_takes_the_schedule_and_refuses_a_bad_fraction_list_before_writing(tmp_path: Path) -> None:
    app = typer.Typer()
    supernet_command.register(app)
    app.command("unused")(lambda: None)
    result = CliRunner().invoke(app, ["supernet", "train", "--space", "proxyless-small", "--resolution", "8",
                                      "--dataset", "synthetic:4", "--train-limit", "32", "--schedule", "progressive",
                                      "--phase-fractions", "0.5,0.5", "--name", "ps", "--runs-dir", str(tmp_path),
                                      "--no-progress"])
    assert result.exit_code == 2 and "phase_fractions has 2 entries; this space has 4 phases" in result.output
    assert not (tmp_path / "ps" / "supernet" / "run.json").exists()
