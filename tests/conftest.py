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


def _u8s8_saturates() -> bool:
    """x86 without VNNI: ONNX Runtime's u8s8 int8 kernels add pairs of products in int16 with
    saturation (vpmaddubsw), so full-range int8 weights do not compute what fake-quant computes."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


# Issue #16 makes the int8 export exact on these CPUs; until then its faithfulness tests are
# expected to fail there (and must pass everywhere else).
needs_exact_int8_kernels = pytest.mark.xfail(
    _u8s8_saturates(), reason="x86 CPU without VNNI: ORT's u8s8 kernels saturate (issue #16)", strict=False)
