"""best/ takes weights another process wrote (a Ray worker's trial directory) only when they
carry the trial's arch hash and intact per-tensor digests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_space import TinySpace

from nas.rundir.atomic import write_atomically
from nas.rundir.files import RunDirectory
from nas.rundir.model_files import WeightsError, load, weights_payload
from nas.rundir.records import BestMetrics
from search_spaces.build import build_model


def worker_weights(tmp_path: Path, arch_index: int) -> tuple[Path, object]:
    arch = TinySpace().all_archs()[arch_index]
    path = tmp_path / "trial" / "weights.safetensors"
    write_atomically(path, weights_payload(build_model(arch).state_dict(), arch))
    return path, arch


def test_worker_weights_of_the_trials_arch_become_best(tmp_path: Path) -> None:
    path, arch = worker_weights(tmp_path, 0)
    run = RunDirectory(tmp_path / "run")
    run.write_best(arch, BestMetrics(0, arch.content_hash(), ()), weights_file=path)
    assert sum(p.numel() for p in load(run.best_dir).parameters()) == sum(
        p.numel() for p in build_model(arch).parameters())


def test_worker_weights_of_another_arch_are_refused_naming_both_hashes(tmp_path: Path) -> None:
    path, arch = worker_weights(tmp_path, 0)
    other = TinySpace().all_archs()[7]
    with pytest.raises(WeightsError, match=f"{arch.content_hash()}.*{other.content_hash()}"):
        RunDirectory(tmp_path / "run").write_best(other, BestMetrics(0, arch.content_hash(), ()), weights_file=path)


def test_worker_weights_with_a_flipped_byte_are_refused(tmp_path: Path) -> None:
    path, arch = worker_weights(tmp_path, 0)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="modified after export"):
        RunDirectory(tmp_path / "run").write_best(arch, BestMetrics(0, arch.content_hash(), ()), weights_file=path)
