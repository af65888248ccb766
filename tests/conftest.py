"""Test-wide settings: one thread (the machine has two cores) and no files in the user's home."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path_factory.getbasetemp() / "ray"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def u8s8_saturates() -> bool:
    """x86 without VNNI: ONNX Runtime's u8s8 int8 kernels add pairs of products in int16 with
    saturation (vpmaddubsw); full-range int8 weights would not compute what fake-quant computes,
    which is why 8-bit weights use 7-bit codes (compress.quantize_ops, reduce_range)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


def saved_model(directory: os.PathLike, stem: int, block: int, head: int, *, stride: int = 1, expand: float = 2,
                resolution: int = 8) -> os.PathLike:
    """A one-MBConv model (random weights, seed 0) saved as arch.json + weights.safetensors: the
    source the compress commands' tests start from."""
    from nas.rundir.model_files import save
    from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model

    spec = ArchSpec(StemSpec(stem), (BlockSpec(Op.MBCONV, block, stride=stride, expand_ratio=expand),),
                    HeadSpec(conv_channels=head, dropout=0.0), resolution=resolution, num_classes=10)
    torch.manual_seed(0)
    save(build_model(spec), spec, directory)
    return directory
