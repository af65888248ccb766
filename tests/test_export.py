"""`nas export` / `nas load`: every format round-trips within its tolerance, `load` rebuilds the
model without pickle, tampering and spec/weights mismatches fail clearly, the card is complete.

The run directories are written by hand in the runner's shapes (config.json from `SearchConfig`,
`TrialRecord`s in trials.jsonl, `BestMetrics` in best/ of `RunDirectory.write_best`), so these
tests do not depend on the runner."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from compress.quantize_export import QDQ_TOLERANCE
from nas.cli import app
from nas.artifacts.export import FORMATS, ExportError, export_run, load, parse_formats
from nas.rundir.model_files import ArchMismatchError, WeightsError
from nas.rundir.files import RunDirectory
from nas.rundir.records import BestMetrics, TrialRecord
from nas.strategies.base import Candidate, Result
from predictors.latency import (
    LatencyTable,
    Measurement,
    MeasureSettings,
    arch_signatures,
)
from search_spaces.build import build_model
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec

BUDGET_MS = 1.3


def tiny_arch(kernel: int = 3, expand: float = 3.0, width: int = 16) -> ArchSpec:
    """mbconv (SE) -> shuffle (a reshape: exercises the dynamic batch axis) -> dsconv -> head."""
    blocks = (BlockSpec(Op.MBCONV, width, stride=2, kernel=kernel, expand_ratio=expand, se_ratio=0.25),
              BlockSpec(Op.SHUFFLE, width), BlockSpec(Op.DSCONV, 24, stride=2, activation="relu6"))
    return ArchSpec(StemSpec(8), blocks, HeadSpec(conv_channels=32, dropout=0.0), resolution=16, num_classes=4,
                    name="tiny-net")


def trained_like(arch: ArchSpec, seed: int = 0) -> torch.nn.Module:
    """Random weights with outputs of order 1 (the default init's logits are ~1e-2, which would
    make any tolerance meaningless) and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = build_model(arch)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.5)
    return model.eval()


def _record(trial_id: int, arch: ArchSpec, status: str, accuracy: float | None, latency: float | None) -> TrialRecord:
    feasible = status == "ok" and accuracy is not None and latency is not None and latency <= BUDGET_MS
    reward = 0.0 if accuracy is None else accuracy * (1.0 if latency <= BUDGET_MS else BUDGET_MS / latency)
    result = Result(status, accuracy, latency, macs=40000, params=2000, train_time_s=1.0, epochs=1,
                    reason=None if status == "ok" else f"{status} for the test")
    return TrialRecord(Candidate(trial_id, arch), result, reward, feasible, "2026-11-22T01:00:00.000+00:00")


# (kernel, expand, status, accuracy): latencies come from the fake table, so k5/e6 are slower
TRIALS = [(3, 3, "ok", 0.61), (5, 6, "infeasible", None), (3, 6, "ok", 0.66), (5, 3, "ok", 0.70),
          (3, 3, "failed", None), (5, 6, "ok", 0.74), (3, 6, "ok", 0.69), (5, 3, "ok", 0.58)]
BEST_TRIAL = 3


def make_table(path: Path, archs: list[ArchSpec]) -> LatencyTable:
    entries = {}
    for arch in archs:
        for _, key in arch_signatures(arch):
            ms = 0.05 * len(key) / 10 + 0.4 * ("_k5" in key) + 0.3 * ("_e6" in key)
            entries[key] = Measurement(ms, ms * 0.95, ms * 1.05, 30)
    table = LatencyTable({"backend": "torch", "threads": 1, "device": "test-host", "cpu_model": "test cpu"},
                         entries, space="tiny", resolution=16, num_classes=4)
    table.save(path)
    return table


def make_run(root: Path, *, finished: bool = True, name: str = "run") -> Path:
    """A run directory in the runner's shapes. finished=False: no best/, no searcher.json, and a
    torn last line in trials.jsonl (a kill mid-append)."""
    run = RunDirectory(root / name)
    archs = [tiny_arch(k, e) for k, e, _, _ in TRIALS]
    table = make_table(root / f"{name}-lut.json", archs)
    run.write_config({"space": "tiny", "latency_budget_ms": BUDGET_MS, "lut_path": str(root / f"{name}-lut.json"),
                      "dataset": "synthetic", "resolution": 16, "num_classes": 4, "strategy": "evolution",
                      "strategy_options": {}, "seed": 0, "trials": 12, "constraint": "hard",
                      "train": {"epochs": 1, "seed": 0}})
    records = []
    for trial_id, ((kernel, expand, status, accuracy), arch) in enumerate(zip(TRIALS, archs)):
        latency = None if status == "failed" else table.predict(arch)
        records.append(_record(trial_id, arch, status, accuracy, latency))
    for record in records:
        run.append_trial(record)
    if finished:
        best = max((r for r in records if r.feasible), key=lambda r: r.result.accuracy)
        metrics = BestMetrics(best.trial_id, best.arch_hash, tuple(best.arch.block_strings()),
                              val_accuracy=best.result.accuracy, test_accuracy=0.68, final_val_accuracy=0.71,
                              weights="weights.safetensors", weights_from="final")
        run.write_best(best.arch, metrics, state_dict=trained_like(best.arch).state_dict())
        run.write_searcher_state("evolution", {"name": "evolution"}, [r.trial_id for r in records])
    else:
        with open(run.trials_path, "ab") as file:
            file.write(json.dumps(_record(99, archs[0], "ok", 0.9, 1.0).to_json())[:57].encode())
    return run.path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full export of every format (with a short real latency measurement), shared by the
    tests that only read its files."""
    root = tmp_path_factory.mktemp("export")
    run = make_run(root)
    report = export_run(run, FORMATS, measure=True,
                        measure_settings=MeasureSettings(warmup=1, blocks=3, block_runs=2, retries=0))
    return {"run": run, "report": report, "out": run / "export", "root": root}


def test_parse_formats_always_keeps_the_readable_pair_and_rejects_unknown_names() -> None:
    assert parse_formats("onnx") == ["json", "safetensors", "onnx"]
    assert parse_formats(None) == list(FORMATS)
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['tflite'\]; choose from json"):
        parse_formats("onnx,tflite")


def test_every_format_is_written_and_verified_within_its_tolerance(exported: dict[str, Any]) -> None:
    report, out = exported["report"], exported["out"]
    assert [item.format for item in report.formats] == list(FORMATS)
    for item in report.formats:
        assert item.path.is_file() and item.path.parent == out and item.size_bytes > 0
    assert report.result("safetensors").max_abs_diff == 0.0  # bitwise: same weights, same kernels
    assert report.result("torchscript").max_abs_diff <= 1e-5
    assert report.result("onnx").max_abs_diff <= 1e-4  # measured ~1e-7 on this model
    int8 = report.result("onnx-int8")
    assert int8.details["relative"] <= int8.tolerance["relative"] == QDQ_TOLERANCE
    assert int8.max_abs_diff == pytest.approx(int8.details["relative"] * int8.details["quantization_error"])
    assert 0.0 <= int8.details["top1_agreement_fp32"] <= 1.0
    for name in ("model.onnx", "model.int8.onnx"):  # dynamic batch axis, opset stated
        graph = onnx.load(str(out / name))
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert graph.opset_import[0].version == report.opset == 18
    saved = json.loads((out / "export.json").read_text())
    assert saved["trial_id"] == BEST_TRIAL and len(saved["formats"]) == 5
    assert report.measured_latency["median_ms"] > 0 and report.measured_latency["backend"] == "torch"
    timed = int8.details["latency"]  # the int8 file timed against fp32 on ORT, interleaved
    assert timed["int8"]["median_ms"] > 0 and timed["threads"] == 1 and timed["isa"]
    assert "Measured int8 latency (`model.int8.onnx`)" in (out / "MODEL_CARD.md").read_text()


def test_load_rebuilds_the_model_from_safetensors_with_equal_outputs(exported: dict[str, Any]) -> None:
    out, run = exported["out"], exported["run"]
    original = trained_like(tiny_arch(5, 3))
    x = torch.randn(3, 3, 16, 16)
    for path in (out, out / "arch.json", out / "weights.safetensors"):
        model = load(path)
        assert not model.training
        with torch.no_grad():
            assert torch.equal(model(x), original(x))
    with safe_open(str(out / "weights.safetensors"), "pt") as file:
        metadata = file.metadata()
    assert metadata["arch_hash"] == tiny_arch(5, 3).content_hash() and metadata["format_version"] == "1"
    # the runner's best/ weights carry no metadata: shapes are still checked, loading works
    with torch.no_grad():
        assert torch.equal(load(run / "best")(x), original(x))


def test_model_card_lists_the_architecture_costs_latency_and_formats(exported: dict[str, Any]) -> None:
    card = (exported["out"] / "MODEL_CARD.md").read_text()
    arch = tiny_arch(5, 3)
    for row in ("| stem | stem | conv | 3 |", "| 1 | blocks.0 | mbconv | 5 | 3 (24) | 0.25 | relu | 16 | 2 | 8x8x8 |",
                "| 2 | blocks.1 | shuffle | 3 | 1 (8) |", "| 3 | blocks.2 | dsconv | 3 | - | - | relu6 | 24 | 2 | 16x4x4 |",
                "| head | head | conv1x1 + pool + fc | 1 | conv 32 | - | relu | 4 classes |"):
        assert row in card, row
    params = sum(p.numel() for p in build_model(arch).parameters())
    predicted = LatencyTable.load(exported["root"] / "run-lut.json").predict(arch)
    for text in (f"{params:,}", f"{predicted:.4f} ms", "70.00% (`val_accuracy`)", "71.00% (`final_val_accuracy`)",
                 "68.00% (`test_accuracy`)",
                 "`synthetic`", "evolution", "1.3 ms (hard)", "8 (6 ok, 1 infeasible, 1 failed)", "ONNX opset 18",
                 "model.int8.onnx", "atol=0.0001, rtol=0.001", f"relative={QDQ_TOLERANCE:g}", "nas.artifacts.export.load(", "ms median",
                 "test-host", "uniform 8-bit"):
        assert text in card, text


def test_a_trial_exports_only_when_best_holds_its_weights(exported: dict[str, Any], tmp_path: Path) -> None:
    run = exported["run"]
    report = export_run(run, "json", out=tmp_path / "t3", trial=BEST_TRIAL, measure=False, card=False)
    assert report.trial_id == BEST_TRIAL and (tmp_path / "t3" / "weights.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match=r"trial 2 has no saved weights: a run keeps weights only in "
                                                r"best/ \(trial 3\)\. Retrain"):
        export_run(run, "json", out=tmp_path / "t2", trial=2, measure=False)
    with pytest.raises(KeyError, match="no finished trial with id 42"):
        export_run(run, "json", trial=42, measure=False)


def test_a_failed_verification_raises_names_the_format_and_removes_the_file(
        exported: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.artifacts import export

    real = export._run_onnx
    monkeypatch.setattr(export, "_run_onnx", lambda path, inputs: real(path, inputs) + 0.01)
    with pytest.raises(ExportError, match=r"onnx export model\.onnx is not faithful: max \|diff\| = 0\.01"):
        export_run(exported["run"], "onnx", out=tmp_path, measure=False, card=False)
    assert not (tmp_path / "model.onnx").exists()


@pytest.fixture
def copy_of_export(exported: dict[str, Any], tmp_path: Path) -> Path:
    for name in ("arch.json", "weights.safetensors"):
        shutil.copy(exported["out"] / name, tmp_path / name)
    return tmp_path


def test_flipped_bytes_in_a_tensor_are_caught_and_named(copy_of_export: Path) -> None:
    path = copy_of_export / "weights.safetensors"
    raw = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_length])
    begin, _ = header["head.classifier.weight"]["data_offsets"]
    raw[8 + header_length + begin + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"tensor 'head\.classifier\.weight' was modified after export"):
        load(copy_of_export)


def test_a_tensor_replaced_by_another_shape_is_named_with_both_shapes(copy_of_export: Path) -> None:
    path = copy_of_export / "weights.safetensors"
    with safe_open(str(path), "pt") as file:
        metadata = file.metadata()
    tensors = load_file(str(path))
    tensors["head.classifier.weight"] = torch.zeros(5, 32)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ArchMismatchError, match=r"head\.classifier\.weight: weights \[5, 32\], arch\.json needs "
                                                r"\[4, 32\]"):
        load(copy_of_export)


def test_an_arch_json_of_another_width_names_both_hashes(copy_of_export: Path) -> None:
    data = json.loads((copy_of_export / "arch.json").read_text())
    data["head"]["conv_channels"] = 48
    (copy_of_export / "arch.json").write_text(json.dumps(data))
    wider = ArchSpec.from_dict(data)
    with pytest.raises(ArchMismatchError) as error:
        load(copy_of_export)
    message = str(error.value)
    assert tiny_arch(5, 3).content_hash() in message and wider.content_hash() in message
    assert "head.conv.0.weight: weights [32, 24, 1, 1], arch.json needs [48, 24, 1, 1]" in message
    # same shapes, different spec (kernel padding/activation): the hash alone catches it
    data["head"]["conv_channels"], data["blocks"][2]["activation"] = 32, "relu"
    (copy_of_export / "arch.json").write_text(json.dumps(data))
    with pytest.raises(ArchMismatchError, match="does not belong to"):
        load(copy_of_export)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-100], r"is truncated: tensor '.*' ends at byte \d+ of the data region"),
    (lambda raw: raw[:8] + b"{not json" + raw[17:], r"corrupt safetensors header"),
    (lambda raw: struct.pack("<Q", 10**9) + raw[8:], r"header claims 1000000000 bytes"),
    (lambda raw: raw[:5], r"truncated \(5 bytes\)"),
])
def test_corrupt_or_truncated_weights_get_a_clear_error(copy_of_export: Path, damage: Any, message: str) -> None:
    path = copy_of_export / "weights.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightsError, match=message):
        load(copy_of_export)


def test_load_refuses_pickles_by_name_and_by_content(exported: dict[str, Any], copy_of_export: Path) -> None:
    with pytest.raises(WeightsError, match=r"refusing to load a \.pt file: TorchScript and torch\.save files are "
                                           r"pickles"):
        load(exported["out"] / "model.torchscript.pt")
    torch.save(trained_like(tiny_arch(5, 3)).state_dict(), copy_of_export / "weights.safetensors")
    with pytest.raises(WeightsError, match=r"is a zip/pickle \(torch\.save or TorchScript\), not safetensors"):
        load(copy_of_export)


def test_cli_export_and_load(exported: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["export", str(exported["run"]), "--format", "onnx", "--no-measure",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and (out / "MODEL_CARD.md").is_file()
    assert "not measured" in (out / "MODEL_CARD.md").read_text()
    result = runner.invoke(app, ["load", str(out)])
    assert result.exit_code == 0, result.output
    params = sum(p.numel() for p in build_model(tiny_arch(5, 3)).parameters())
    assert f"params: {params:,}" in result.output and "input: 1 x 3 x 16 x 16" in result.output
    result = runner.invoke(app, ["load", str(exported["out"] / "model.torchscript.pt")])
    assert result.exit_code == 2 and "refusing to load a .pt file" in result.output
    result = runner.invoke(app, ["export", str(exported["run"]), "--trial", "0", "--no-measure", "--out", str(out)])
    assert result.exit_code == 2 and "trial 0 has no saved weights" in result.output


def test_export_of_a_run_without_best_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, finished=False)
    with pytest.raises(FileNotFoundError, match="the run has no feasible trial yet"):
        export_run(run, "json", measure=False)


def test_a_half_written_best_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    (run / "best" / "metrics.json").write_text(json.dumps({**metrics, "arch_hash": "0123456789abcdef"}))
    with pytest.raises(ArchMismatchError, match="names arch_hash 0123456789abcdef but .*arch.json hashes to"):
        export_run(run, "json", measure=False)
    (run / "best" / "metrics.json").unlink()  # the runner deletes it first when it saves a new best
    with pytest.raises(FileNotFoundError, match="best/ is being rewritten by the running search"):
        export_run(run, "json", measure=False)


def test_the_card_lists_a_compression_policy_of_best_and_the_runs_variants(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    policy = {"schema": "hwnas-compress-policy", "schema_version": 1, "kind": "quantize", "settings": {},
              "layers": {"stem.0.0": {"weight_bits": 8, "activation_bits": 8}}}
    (run / "best" / "policy.json").write_text(json.dumps(policy))
    (run / "compress" / "prune").mkdir(parents=True)
    (run / "compress" / "prune" / "policy.json").write_text(json.dumps({**policy, "kind": "prune", "layers": {}}))
    card = export_run(run, "json", measure=False).card_path.read_text()
    assert "- `best/policy.json`: kind **quantize**, 1 layers" in card
    assert "Compressed variants of this run (separate models, not exported here): `compress/prune` (prune)" in card


def test_int8_can_calibrate_on_the_runs_dataset(exported: dict[str, Any], tmp_path: Path) -> None:
    report = export_run(exported["run"], "onnx-int8", out=tmp_path, measure=False, card=False,
                        calibration="dataset")
    int8 = report.result("onnx-int8")
    assert report.calibration == "dataset" and int8.details["relative"] <= QDQ_TOLERANCE
    with pytest.raises(ValueError, match=r"calibration='imagenet' not in \{random, dataset\}"):
        export_run(exported["run"], "onnx-int8", out=tmp_path, measure=False, calibration="imagenet")
