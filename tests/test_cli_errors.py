"""Errors on the command line: bad input (a `UserError`) is one line `error: ...` and exit 2, with
no traceback; anything else is a bug and propagates (exit 1, traceback shown).

One test per kind of bad input, each through the CLI, none of them training or measuring."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

import nas.commands.zoo as zoo_command
from nas.cli import app
from nas.rundir.model_files import save
from predictors.latency import LatencyTable
from predictors.latency.agent import serve
from predictors.latency.builder import LocalMeasurer
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, UserError, build_model

runner = CliRunner()
TOKEN = "cli-errors-token-0123456789"


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_user_error(result: Result, *names: str) -> str:
    """Exit 2, exactly one non-empty stderr line `error: ...` naming each of `names`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in result.output
    for name in names:
        assert name in line, (name, line)
    return line


def tiny_spec() -> ArchSpec:
    return ArchSpec(
        StemSpec(16),
        (BlockSpec(Op.MBCONV, 16, expand_ratio=4), BlockSpec(Op.MBCONV, 24, stride=2, expand_ratio=4)),
        HeadSpec(conv_channels=64, dropout=0.0),
        resolution=8,
        num_classes=10,
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    save(build_model(tiny_spec()), tiny_spec(), tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def empty_table(tmp_path: Path) -> Path:
    path = tmp_path / "table.json"
    LatencyTable({"backend": "torch", "threads": 1}, space="mnasnet", resolution=32, num_classes=10).save(path)
    return path


# -- one test per kind of bad input -----------------------------------------------------------------


def test_bad_spec(tmp_path: Path, empty_table: Path) -> None:
    data = tiny_spec().to_dict()
    data["blocks"][1]["kernel"] = 4
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(data))
    assert_user_error(invoke("lut", "predict", str(empty_table), str(spec)), str(spec), "blocks[1].kernel=4",
                      "{3, 5, 7}")
    spec.write_text("{not json")
    assert_user_error(invoke("lut", "predict", str(empty_table), str(spec)), str(spec), "not valid JSON")


def test_bad_table(tmp_path: Path, empty_table: Path) -> None:
    table = tmp_path / "other.json"
    table.write_text(json.dumps({"schema": "something-else", "entries": {}}))
    assert_user_error(invoke("lut", "info", str(table)), str(table), "schema='something-else'",
                      "expected 'hwnas-latency-table'")
    table.write_text('{"schema": "hwnas-latency-table", "schema_vers')
    assert_user_error(invoke("lut", "info", str(table)), str(table), "not valid JSON")
    # a multi-line message (one missing layer per line) still ends up on one line
    line = assert_user_error(invoke("lut", "predict", str(empty_table), "zoo:mobilenet_v2"), "lacks 19 layer(s)")
    assert line.count("@") == 19  # every missing layer's key, e.g. stem_k3_c32_s2_relu6@3x32x32


def test_bad_policy(model_dir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"schema": "hwnas-compress-policy", "schema_version": 1, "kind": "prune",
                                  "settings": {}, "layers": {"blocks.1": 0.95}}))
    result = invoke("compress", "prune", str(model_dir), "--policy", str(policy), "--dataset", "synthetic:2",
                    "--epochs", "0", "--no-measure", "--out", str(tmp_path / "out"))
    assert_user_error(result, "blocks.1=0.95", "allowed: [0.0, 0.9]")


def test_bad_run_directory(tmp_path: Path) -> None:
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    for command in (["report", str(not_a_run)], ["export", str(not_a_run), "--no-measure"]):
        assert_user_error(invoke(*command), str(not_a_run), "config.json")


def test_bad_dataset(model_dir: Path, tmp_path: Path) -> None:
    result = invoke("compress", "prune", str(model_dir), "--ratio", "0.5", "--dataset", "bogus:x", "--epochs", "0",
                    "--no-measure", "--out", str(tmp_path / "out"))
    assert_user_error(result, "'bogus:x'", "synthetic")


def test_bad_cifar10_file(model_dir: Path, tmp_path: Path) -> None:
    def prune_on(dataset: str) -> Result:
        return invoke("compress", "prune", str(model_dir), "--ratio", "0.5", "--dataset", dataset, "--epochs", "0",
                      "--no-measure", "--out", str(tmp_path / "out"))

    missing = tmp_path / "nowhere.npz"
    assert_user_error(prune_on(f"cifar10:{missing}"), str(missing), "does not exist")
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    assert_user_error(prune_on(f"cifar10:{partial}"), str(partial), "lacks key(s)", "y_train")


def test_bad_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAS_DEVICE_TOKEN", raising=False)
    out = str(tmp_path / "table.json")
    build = ["lut", "build", "--space", "mnasnet", "--resolution", "32", "--num-classes", "10", "--out", out]
    assert_user_error(invoke(*build, "--backend", "bogus"), "latency backend 'bogus'", "onnxruntime", "torch")
    assert_user_error(invoke(*build, "--device", "http://127.0.0.1:1"), "--token", "--device")
    assert_user_error(invoke(*build, "--device", "ftp://x", "--token", TOKEN), "--device", "http://HOST:PORT")
    assert_user_error(invoke("lut", "build", "--space", "nope", "--out", out), "search space 'nope'", "mnasnet")
    assert_user_error(invoke("zoo", "resnet50"), "zoo model 'resnet50'", "mobilenet_v2")
    assert not Path(out).exists()


def test_bad_compression_option(model_dir: Path, tmp_path: Path) -> None:
    common = ["--dataset", "synthetic:2", "--epochs", "0", "--out", str(tmp_path / "out")]
    assert_user_error(invoke("compress", "quantize", str(model_dir), "--search", "--size-ratio", "0.01", *common),
                      "below the smallest reachable")
    assert_user_error(invoke("compress", "prune", str(model_dir), "--budget-macs", "1", "--no-measure", *common),
                      "budget unreachable", "max_ratio=0.8")


def test_unknown_latency_table_format(tmp_path: Path) -> None:
    source = tmp_path / "table.yaml"
    source.write_text("{}")
    assert_user_error(invoke("lut", "import", str(source), "--format", "bogus", "--out", str(tmp_path / "t.json")),
                      "latency table format 'bogus'", "proxyless")


def test_bad_strategy_option(tmp_path: Path, empty_table: Path) -> None:
    search = ["search", "--space", "mnasnet", "--resolution", "32", "--dataset", "digits", "--lut", str(empty_table),
              "--latency-budget", "5ms", "--trials", "1", "--epochs", "1", "--final-epochs", "0", "--no-progress",
              "--runs-dir", str(tmp_path / "runs")]
    assert_user_error(invoke(*search, "--name", "evo", "--strategy", "evolution",
                             "--strategy-options", '{"population_size": 1}'), "population_size=1", ">= 2")
    assert_user_error(invoke(*search, "--name", "rl", "--strategy", "mnas-rl",
                             "--strategy-options", '{"baseline_decay": 1.5}'), "baseline_decay=1.5", "[0, 1)")


def test_missing_input_file(tmp_path: Path, empty_table: Path) -> None:
    missing = str(tmp_path / "nowhere.json")
    assert_user_error(invoke("lut", "predict", missing, "zoo:mobilenet_v2"), "latency table", missing,
                      "does not exist")
    assert_user_error(invoke("lut", "predict", str(empty_table), missing), missing, "neither zoo:NAME")
    assert_user_error(invoke("lut", "import", missing, "--out", str(tmp_path / "t.json")), missing, "does not exist")
    assert_user_error(invoke("lut", "build", "--space", "mnasnet", "--out", missing, "--resume"), "--resume", missing)


def test_bad_weights_file(model_dir: Path) -> None:
    weights = model_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # cut short, as an interrupted copy leaves it
    assert_user_error(invoke("load", str(model_dir)), str(weights), "truncated")
    weights.unlink()
    assert_user_error(invoke("load", str(model_dir)), str(weights), "does not exist")
    assert_user_error(invoke("load", str(model_dir / "model.pt")), "refusing to load a .pt file")


@pytest.fixture
def agent() -> Iterator[Any]:
    server = serve("127.0.0.1", 0, TOKEN, LocalMeasurer("torch"))
    yield server
    server.shutdown()


def test_device_that_refuses_the_token_or_is_not_there(agent: Any, tmp_path: Path) -> None:
    build = ["lut", "build", "--space", "mnasnet", "--resolution", "32", "--num-classes", "10",
             "--out", str(tmp_path / "table.json")]
    assert_user_error(invoke(*build, "--device", agent.url, "--token", "wrong-token"), agent.url, "401 bad token")
    assert_user_error(invoke(*build, "--device", "http://127.0.0.1:1", "--token", TOKEN), "unreachable")


# -- a bug is not bad input --------------------------------------------------------------------------


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom")


def test_internal_error_is_not_reported_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo_command, "zoo_rows", _boom)
    result = invoke("zoo")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "boom"
    assert not result.stderr.strip()
    # the exception keeps its traceback, down to where it was raised
    assert result.exc_info is not None and result.exc_info[2].tb_next is not None
    frames = []
    tb = result.exc_info[2]
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert frames[-2:] == ["zoo_command", "_boom"]


def test_internal_error_shows_its_traceback_like_the_nas_process(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """What `nas` does: `app()` lets the exception out (the interpreter then exits 1) and the hook
    typer installs prints its traceback."""
    monkeypatch.setattr(zoo_command, "zoo_rows", _boom)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored afterwards: app() replaces it
    with pytest.raises(RuntimeError, match="boom") as caught:
        app(["zoo"], prog_name="nas")
    sys.excepthook(caught.type, caught.value, caught.tb)
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "zoo_command" in err
    assert not any(line.startswith("error:") for line in err.splitlines())


# -- the classes themselves --------------------------------------------------------------------------


def test_user_errors_keep_their_builtin_base_and_plain_message(tmp_path: Path) -> None:
    from compress.prune import PrunePolicy
    from predictors.latency.protocol import RemoteAccessError, RemoteError
    from search_spaces import DeviceError, InputFileError, OptionError, SpecError, UnknownNameError, zoo
    from search_spaces.spaces import get_space

    with pytest.raises(KeyError) as unknown:  # a failed lookup stays a KeyError ...
        zoo.get("resnet50")
    assert isinstance(unknown.value, UnknownNameError) and str(unknown.value).startswith("unknown zoo model")
    with pytest.raises(OptionError, match=r"space option\(s\) \['depth'\] unknown to search space 'mnasnet'; "
                                          r"allowed: \['base', 'width_mult', 'ops'"):
        get_space("mnasnet", resolution=32, num_classes=10, depth=3)
    with pytest.raises(SpecError, match=r"mnasnet: ops \['conv'\] not in \{mbconv, shuffle, ghost, dsconv, fire\}"):
        get_space("mnasnet", resolution=32, num_classes=10, ops=["mbconv", "conv"])
    with pytest.raises(FileNotFoundError) as missing:
        PrunePolicy.load(tmp_path / "policy.json")
    assert isinstance(missing.value, InputFileError)
    assert issubclass(RemoteAccessError, RemoteError) and issubclass(RemoteAccessError, DeviceError)
    assert issubclass(DeviceError, RuntimeError) and not issubclass(RemoteError, UserError)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_disk_or_read_only_directory_is_one_line_naming_the_path(code: int, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine refusing a write is not a bug in our code: one line, the path, exit 2."""
    out = tmp_path / "b1ish.json"

    def refuse(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    line = assert_user_error(invoke("compress", "scale", "zoo:mobilenet_v2", "--width", "0.5", "--out", str(out)),
                             str(out), os.strerror(code))
    assert "intact" in line and not out.exists()


def test_other_os_errors_keep_their_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EINVAL, "Invalid argument", str(self))

    monkeypatch.setattr(Path, "write_text", broken)
    result = invoke("compress", "scale", "zoo:mobilenet_v2", "--width", "0.5", "--out", str(tmp_path / "x.json"))
    assert result.exit_code == 1 and isinstance(result.exception, OSError)
