"""Tests for predictors.latency.measure: the protocol (with a scripted fake backend) and the real CPU backends."""

from __future__ import annotations

import json
import math
import platform
import resource

import numpy as np
import pytest
import torch
from torch import nn

from predictors.latency import backends as B
from predictors.latency import measure as M

FAST = {"warmup": 2, "blocks": 5, "block_runs": 3, "retries": 0}
CPU_BACKENDS = ["torch", "onnxruntime"]
TINY = (1, 8, 8, 8)


def tiny() -> nn.Module:
    return nn.Conv2d(8, 8, 1)


class ChannelShuffleMix(nn.Module):
    """Exercises the ops the search spaces use: shuffle via reshape/transpose, slicing, concatenation."""

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.branch = nn.Sequential(nn.Conv2d(channels // 2, channels // 2, 1, bias=False), nn.BatchNorm2d(channels // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        left, right = x[:, : c // 2], x[:, c // 2 :]
        return torch.cat([left, self.branch(right)], dim=1)


def mixed_block() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
        ChannelShuffleMix(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    # Non-trivial BatchNorm statistics, so a dropped or mis-folded BN would show in the output.
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


# --- Measurement -------------------------------------------------------------------------------


def test_measurement_round_trip_and_spread() -> None:
    m = M.Measurement(median_ms=2.0, p10_ms=1.5, p90_ms=2.5, runs=30)
    assert m.spread == pytest.approx(0.5)
    d = m.to_dict()
    assert d == {"median_ms": 2.0, "p10_ms": 1.5, "p90_ms": 2.5, "runs": 30}
    assert M.Measurement.from_dict(json.loads(json.dumps(d))) == m


def test_measurement_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="median_ms"):
        M.Measurement(median_ms=math.nan, p10_ms=1.0, p90_ms=2.0, runs=1)
    with pytest.raises(ValueError, match="p10_ms <= median_ms <= p90_ms"):
        M.Measurement(median_ms=3.0, p10_ms=1.0, p90_ms=2.0, runs=1)
    with pytest.raises(ValueError, match="runs"):
        M.Measurement(median_ms=1.0, p10_ms=1.0, p90_ms=1.0, runs=0)
    with pytest.raises(ValueError, match="from_dict: keys.*expected.*runs"):
        M.Measurement.from_dict({"median_ms": 1.0, "p10_ms": 1.0, "p90_ms": 1.0})


# --- protocol, with a scripted backend (deterministic) ----------------------------------------


BLOCK_RUNS = 7  # the scripted op answers from its script only for timed blocks of this length


class ScriptedOp(M.PreparedOp):
    """Returns per-run seconds from a script; logs every timed block so order can be checked."""

    def __init__(self, name: str, script: list[float], log: list[tuple[str, int]]) -> None:
        self.name, self.script, self.log = name, list(script), log

    def time_block(self, n: int) -> float:
        self.log.append((self.name, n))
        return self.script.pop(0) if n == BLOCK_RUNS and self.script else 1e-3

    def infer(self) -> np.ndarray:
        return np.zeros(1)


class ScriptedBackend(M.LatencyBackend):
    name = "scripted"

    def __init__(self, scripts: dict[str, list[float]]) -> None:
        super().__init__(threads=1)
        self.scripts, self.log = scripts, []  # type: ignore[var-annotated]

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> M.PreparedOp:
        M.check_input_shape(input_shape)
        return ScriptedOp(module.name, self.scripts[module.name], self.log)  # type: ignore[arg-type]


class Named(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def test_protocol_interleaves_summarises_and_retries() -> None:
    seconds = [3.2e-3, 2.8e-3, 3.0e-3, 3.1e-3, 2.9e-3]  # spread 0.11: stable
    noisy_then_calm = [1e-3, 1e-3, 9e-3, 1e-3, 1e-3] + [2e-3] * 5  # spread 0.8 first, then 0
    backend = ScriptedBackend({"a": seconds, "b": noisy_then_calm})
    done: list[int] = []
    a, b = M.measure_modules(
        backend, [(Named("a"), TINY), (Named("b"), TINY)],
        warmup=4, blocks=5, block_runs=BLOCK_RUNS, max_spread=0.5, retries=1, progress=done.append,
    )
    assert a.median_ms == pytest.approx(3.0)
    assert (a.p10_ms, a.p90_ms) == (pytest.approx(2.84), pytest.approx(3.16))  # linear interpolation
    assert a.runs == 35
    assert b.median_ms == pytest.approx(2.0) and b.spread == 0.0  # the calmer retry is kept
    assert done == [1, 2]
    timed = [name for name, n in backend.log if n == BLOCK_RUNS]
    assert timed[:10] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # rotating order
    assert timed[10:] == ["b"] * 5  # only the unstable item is re-measured
    assert backend.log[:2] == [("a", 4), ("b", 4)]  # warm-up first
    blocks = [i for i, (_, n) in enumerate(backend.log) if n == BLOCK_RUNS]
    assert all(backend.log[i - 1][1] == 1 for i in blocks)  # an untimed run before each block


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"blocks": 0}, "blocks"), ({"block_runs": 0}, "block_runs"), ({"warmup": -1}, "warmup"),
     ({"retries": -1}, "retries"), ({"max_spread": 0}, "max_spread")],
)
def test_protocol_arguments_are_checked(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        M.measure_modules(ScriptedBackend({"a": []}), [(Named("a"), TINY)], **kw)


# --- real CPU backends ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_cpu_backend_measures_tiny_conv(name: str) -> None:
    m = M.measure_module(M.get_backend(name, threads=1), tiny(), TINY, **FAST)
    assert math.isfinite(m.median_ms) and m.median_ms > 0
    assert m.p10_ms <= m.median_ms <= m.p90_ms
    assert m.runs == FAST["blocks"] * FAST["block_runs"]


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_larger_module_measures_slower(name: str) -> None:
    big, small = M.measure_modules(
        M.get_backend(name),
        [(nn.Conv2d(64, 64, 3, padding=1), (1, 64, 32, 32)), (tiny(), TINY)],
        **FAST,
    )
    # ~75 MFLOP against ~1 kFLOP: the order must hold by a wide margin however noisy the machine.
    assert big.median_ms > 3 * small.median_ms


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_metadata_records_the_setup(name: str) -> None:
    meta = M.get_backend(name, threads=2).metadata()
    json.dumps(meta)  # must be storable in a latency table header
    assert meta["backend"] == name and meta["threads"] == 2 and meta["batch_size"] == 1
    assert meta["logical_cores"] >= 1 and meta["cpu_model"] and meta["device"]
    assert {"python", "torch"} <= meta["versions"].keys()
    if name == "torch":
        assert meta["malloc"] == (B.GLIBC_MALLOC_SETTINGS if platform.libc_ver()[0] == "glibc" else "default")
    if name == "onnxruntime":
        assert meta["exporter"] == "torchscript"
        assert meta["versions"]["onnx_opset"] == B.ONNX_OPSET and meta["versions"]["onnxruntime"]
        assert meta["session_options"] == {
            "intra_op_num_threads": 2, "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"],
        }


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_export_is_faithful(exporter: str) -> None:
    module, shape = mixed_block(), (1, 8, 12, 12)
    ort_op = M.get_backend("onnxruntime", exporter=exporter, check_export=False).prepare(module, shape)
    with torch.inference_mode():
        want = module.eval()(B.fixed_input(shape)).numpy()
    np.testing.assert_allclose(ort_op.infer(), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(M.get_backend("torch").prepare(module, shape).infer(), want, atol=1e-6)


def test_unfaithful_export_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = B.export_onnx

    def broken_export(module: nn.Module, x: torch.Tensor, exporter: str = "torchscript") -> bytes:
        with torch.no_grad():
            module.weight.add_(1.0)  # the exported graph no longer matches the eager module
        return real_export(module, x, exporter)

    monkeypatch.setattr(B, "export_onnx", broken_export)
    with pytest.raises(RuntimeError, match="not faithful"):
        M.get_backend("onnxruntime").prepare(tiny(), TINY)


def test_measuring_leaves_module_and_threads_untouched() -> None:
    module = mixed_block().train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    threads = torch.get_num_threads()
    for name in CPU_BACKENDS:
        M.measure_module(M.get_backend(name, threads=1), module, (1, 8, 8, 8), **FAST)
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert torch.get_num_threads() == threads


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc pinning is glibc-specific")
def test_torch_backend_runs_without_page_faults() -> None:
    backend = M.get_backend("torch")
    block = nn.Sequential(nn.Conv2d(24, 144, 1), nn.ReLU6(), nn.Conv2d(144, 144, 3, padding=1, groups=144), nn.Conv2d(144, 24, 1))
    with backend.pinned():
        op = backend.prepare(block, (1, 24, 56, 56))
        op.time_block(10)  # the heap grows to its working size (first touches fault once)
        faults_per_run = []
        for _ in range(3):  # the least of three: a one-off heap extension may land in any block
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            op.time_block(10)
            faults_per_run.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
    assert min(faults_per_run) < 20  # unpinned glibc: ~2000 per run, re-faulting every 1.8 MB activation


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_backend_lists_registered_names() -> None:
    with pytest.raises(KeyError, match="'nope'.*registered: cuda, onnxruntime, .*torch"):  # + onnxruntime-int8 once compress is imported
        M.get_backend("nope")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_threads_names_the_field(threads: object) -> None:
    with pytest.raises(ValueError, match="threads="):
        M.get_backend("torch", threads=threads)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(8, 8, 8, 8), (1, 0, 8, 8), (8,), "1x8x8x8", (1, 8.0, 8, 8)])
def test_bad_input_shape_names_the_field(shape: object) -> None:
    with pytest.raises(ValueError, match="input_shape="):
        M.get_backend("torch").prepare(tiny(), shape)  # type: ignore[arg-type]


def test_input_shape_that_does_not_fit_the_module() -> None:
    with pytest.raises(ValueError, match=r"items\[1\]: input_shape=\(1, 3, 8, 8\) does not fit Conv2d"):
        M.measure_modules(M.get_backend("torch"), [(tiny(), TINY), (tiny(), (1, 3, 8, 8))], **FAST)


def test_bad_exporter_is_named() -> None:
    with pytest.raises(ValueError, match="exporter='jit'"):
        M.get_backend("onnxruntime", exporter="jit")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present; the no-GPU error cannot happen")
def test_cuda_backend_without_gpu_says_why() -> None:
    with pytest.raises(RuntimeError, match="'cuda' needs a CUDA GPU"):
        M.get_backend("cuda")


def test_still_unstable_item_is_kept_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [1e-3, 1e-3, 9e-3, 1e-3, 1e-3] * 2
    done: list[int] = []
    with caplog.at_level("WARNING", logger=M.__name__):
        (m,) = M.measure_modules(
            ScriptedBackend({"a": noisy}), [(Named("a"), TINY)],
            blocks=5, block_runs=BLOCK_RUNS, max_spread=0.5, retries=1, progress=done.append,
        )
    assert m.median_ms == pytest.approx(1.0) and m.spread > 0.5
    assert done == [1]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["1 of 1 item(s) still unstable after 1 retries"]
    assert "worst items[0] at" in caplog.text
