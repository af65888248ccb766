"""`export_run`: the deployable artefacts of a search run, each verified against PyTorch.

Formats (file names in ``FILE_NAMES``):

- ``json``: arch.json; verified by parsing it back (equal spec, equal content hash).
- ``safetensors``: weights.safetensors with integrity metadata (`nas.rundir.model_files`); verified by
  `load()` rebuilding the model: outputs must be bitwise equal (max |diff| = 0).
- ``torchscript``: model.torchscript.pt, `torch.jit.trace` of the eval model; fp32 check.
- ``onnx``: model.onnx, TorchScript ONNX exporter at opset `ONNX_OPSET` (the latency backend's),
  dynamic batch axis ("batch"); run by ONNX Runtime with the latency backend's session options.
- ``onnx-int8``: model.int8.onnx, the all-8-bit QDQ model of `compress.quantize` (BN folded,
  per-channel int8 weights stored as int8 initializers on 7-bit codes, per-tensor uint8
  activations calibrated on ``calibration`` inputs, int8 residual adds and output quantizers:
  `compress.quantize_graph`, `compress.quantize_onnx`), also with a dynamic batch axis. Checked
  against the *fake-quantized* PyTorch model, not fp32.

Verification (`VERIFY_INPUTS` seeded N(0,1) images, batch 2 so the dynamic axis is exercised):
fp32 formats must satisfy ``|got - want| <= atol + rtol * |want|`` with the latency backend's
``EXPORT_ATOL = 1e-4, EXPORT_RTOL = 1e-3`` (measured: 0 for TorchScript, ~1e-8 for ONNX on the test
models); int8 must differ from the fake-quant model by at most ``QDQ_TOLERANCE`` (0.5) times what
quantization itself changes (see `compress.quantize_export`), per sample and as one batch of
`INT8_CHECK_SAMPLES`; its
top-1 agreement with
fp32 is reported, not enforced (8-bit rounding may flip near-ties). A failed check deletes the
file and raises `ExportError` naming the format and the max difference.

json and safetensors are always written: they are what `load()` and the model card's
instructions use, and the only formats read back without unpickling.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces.errors import InputFileError, OptionError
from nas.artifacts.export_report import ExportReport, FormatResult
from nas.rundir.model_files import ArchMismatchError, WeightsError, load, load_model_files, save
from nas.rundir.records import BestMetrics
from nas.rundir.runinfo import RunInfo, read_run
from predictors.latency.backends import EXPORT_ATOL, EXPORT_RTOL, ONNX_OPSET, OnnxRuntimeBackend
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "ArchMismatchError", "ExportError", "ExportReport", "FormatResult", "WeightsError",
           "export_model", "export_run", "load"]

FORMATS = ("json", "safetensors", "torchscript", "onnx", "onnx-int8")
FILE_NAMES = {"json": "arch.json", "safetensors": "weights.safetensors", "torchscript": "model.torchscript.pt",
              "onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
VERIFY_BATCH, VERIFY_SEED, CALIBRATION_SAMPLES = 2, 1234, 32
INT8_CHECK_SAMPLES = 16  # int8 codes flip near rounding midpoints: more samples, a fairer top-1 figure
INPUT_NAME, OUTPUT_NAME = "input", "logits"
FP32_CRITERIA = {  # how each fp32 format is verified, in words (the model card shows them)
    "safetensors": "load() (no pickle) rebuilds the model: outputs bitwise equal, batch 2",
    "torchscript": "torch.jit.load output vs eager PyTorch, batch 2",
    "onnx": "ONNX Runtime CPU output vs eager PyTorch, batch 2 (exported at batch 1)",
}


class ExportError(RuntimeError):
    """An exported file does not reproduce the model within its tolerance, or cannot be made."""


def parse_formats(formats: str | Sequence[str] | None) -> list[str]:
    """Requested formats in canonical order, always including json and safetensors."""
    if formats is None:
        return list(FORMATS)
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    wanted = {item.strip().lower() for item in items if item.strip()}
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        raise OptionError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    return [name for name in FORMATS if name in wanted | {"json", "safetensors"}]


def _source(info: RunInfo, trial: int | None) -> tuple[Path, str, int | None]:
    """The directory holding the weights to export, a description, and the trial id."""
    best = info.rundir.best_dir
    best_id = info.best_metrics.trial_id if info.best_metrics is not None else None
    if trial is not None:
        arch = info.trial(trial).arch  # UnknownNameError naming the known ids
        same = trial == best_id or (best_id is None and info.best_arch is not None
                                    and arch.content_hash() == info.best_arch.content_hash())
        if not same:
            held = f"trial {best_id}" if best_id is not None else "the best trial"
            raise InputFileError(
                f"trial {trial} has no saved weights: a run keeps weights only in best/ ({held}). Retrain trial "
                f"{trial}'s architecture (candidate.arch in trials.jsonl) to export it, or drop --trial"
            )
    if not (best / "arch.json").is_file():
        raise InputFileError(f"{best}/arch.json does not exist: the run has no feasible trial yet; wait for one")
    if not (best / "weights.safetensors").is_file():
        from nas.training.data import is_tabular

        if info.dataset is not None and is_tabular(info.dataset):
            raise InputFileError(f"{info.path}: searched on the tabular dataset {info.dataset!r}: its trials were "
                                 "answered from the table and have no weights to export")
        raise InputFileError(f"{best}/weights.safetensors does not exist: the run kept no weights for its best "
                                "trial (metrics.json weights=null); `nas search --resume` retrains it, then export again")
    label = f"best/ (trial {best_id})" if best_id is not None else "best/"
    return best, label, best_id


def _load_consistent(best: Path) -> nn.Module:
    """best/'s model, refusing a half-rewritten best/. The runner deletes metrics.json first, then
    replaces the weights, arch.json, and writes metrics.json last; so an unchanged metrics.json
    before and after reading means the weights and arch.json read in between belong together."""
    metrics_path = best / "metrics.json"
    before = metrics_path.read_bytes() if metrics_path.is_file() else None
    if before is None:
        raise InputFileError(f"{metrics_path} is missing: best/ is being rewritten by the running search (try "
                                "again in a moment) or the run was killed while saving it (`nas search --resume`)")
    model, _ = load_model_files(best)
    after = metrics_path.read_bytes() if metrics_path.is_file() else None
    if after != before:
        raise InputFileError(f"{best} changed while it was read (a new best trial is being saved); export again")
    recorded = BestMetrics.from_json(json.loads(before), str(metrics_path)).arch_hash
    if recorded != model.spec.content_hash():
        raise ArchMismatchError(f"{metrics_path} names arch_hash {recorded} but {best}/arch.json hashes to "
                                f"{model.spec.content_hash()}: best/ is inconsistent; `nas search --resume` repairs it")
    return model


def verification_inputs(arch: ArchSpec, count: int = VERIFY_BATCH, seed: int = VERIFY_SEED) -> torch.Tensor:
    shape = (count, arch.in_channels, arch.resolution, arch.resolution)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX of an eval module with a dynamic batch axis. Same exporter, opset and constant folding
    as `predictors.latency.measure.export_onnx`, which cannot take dynamic axes (it times batch 1)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning, UserWarning):
            warnings.simplefilter("ignore", category)  # deprecation notices; the output is verified below
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buffer.getvalue()


def _run_onnx(path: Path, inputs: torch.Tensor) -> np.ndarray:
    # the latency backend's session options: what runs here is what the latency numbers describe
    session = OnnxRuntimeBackend(threads=1).session(path.read_bytes())
    return session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]


def _fp32_outputs(name: str, model: nn.Module, out: Path, inputs: torch.Tensor) -> np.ndarray:
    """Write format `name` of `model` and run the written file on `inputs`."""
    path = out / FILE_NAMES[name]
    if name == "onnx":
        path.write_bytes(onnx_bytes(model, inputs[:1]))
        return _run_onnx(path, inputs)
    if name == "torchscript":
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            traced = torch.jit.trace(model, inputs[:1], check_trace=False)  # traced at batch 1, checked at 2
            torch.jit.save(traced, str(path))
            reloaded = torch.jit.load(str(path))  # our own file, just written: never a user's
    else:  # safetensors: written by the json step, which parse_formats always puts first: the pair is one save
        reloaded = load(out)
    with torch.no_grad():
        return reloaded(inputs).numpy()


def _checked_fp32(name: str, path: Path, got: np.ndarray, want: np.ndarray) -> FormatResult:
    """The result of an fp32 format whose outputs match PyTorch's (safetensors: bitwise); else the
    file is removed and `ExportError` names the difference."""
    if got.shape != want.shape:
        path.unlink(missing_ok=True)
        raise ExportError(f"{name} export {path.name}: output shape {got.shape} != PyTorch's {want.shape} at batch "
                          f"{want.shape[0]} (dynamic batch axis broken?); file removed")
    difference = float(np.max(np.abs(got - want))) if got.size else 0.0
    atol, rtol = (0.0, 0.0) if name == "safetensors" else (EXPORT_ATOL, EXPORT_RTOL)
    if not np.allclose(got, want, rtol=rtol, atol=atol) or not math.isfinite(difference):
        path.unlink(missing_ok=True)
        raise ExportError(f"{name} export {path.name} is not faithful: max |diff| = {difference:.3g} vs PyTorch "
                          f"(allowed atol={atol}, rtol={rtol}); file removed")
    return FormatResult(name, path, path.stat().st_size, FP32_CRITERIA[name], difference, {"atol": atol, "rtol": rtol},
                        {"opset": ONNX_OPSET} if name == "onnx" else {})


def _onnx_int8(model: nn.Module, path: Path, inputs: torch.Tensor, want_fp32: np.ndarray,
               calibration: torch.Tensor) -> FormatResult:
    from compress.quantize import apply_policy, calibrate, frozen_qparams
    from compress.quantize_export import QDQ_TOLERANCE, check_qdq_export, require_int8
    from compress.quantize_onnx import int8_graph
    from compress.quantize_policy import uniform_policy

    qmodel = calibrate(apply_policy(model, uniform_policy(model, 8)), calibration.split(8)).eval()
    require_int8(qmodel)
    with frozen_qparams(qmodel):  # scales as initializers: ORT fuses DQ-Conv-Q into QLinearConv
        path.write_bytes(int8_graph(onnx_bytes(qmodel, inputs[:1]))[0])  # int8 initializers, one Q per tensor
    check = check_qdq_export(qmodel, path.read_bytes(), inputs)  # per sample, against fake-quant
    got = _run_onnx(path, inputs)
    with torch.no_grad():
        want = qmodel(inputs).numpy()
    worst = max(check.max_abs_diff, float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf)
    relative = worst / check.quantization_error if check.quantization_error > 0 else math.inf
    if not relative <= QDQ_TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"onnx-int8 export {path.name} is not faithful: max |ORT - fake-quant PyTorch| = {worst:.3g} = "
            f"{relative:.2f} x the quantization error {check.quantization_error:.3g} (max |fake-quant - float|), "
            f"allowed {QDQ_TOLERANCE}; file removed"
        )
    top1_fp32 = float(np.mean(got.argmax(-1) == want_fp32.argmax(-1)))
    return FormatResult(
        "onnx-int8", path, path.stat().st_size,
        f"ONNX Runtime vs fake-quantized PyTorch (batch 1 and batch {len(inputs)}), relative to the quantization error",
        worst, {"relative": QDQ_TOLERANCE},
        {"quantization_error": check.quantization_error, "relative": relative,
         "top1_agreement_fake_quant": check.top1_agreement,
         "top1_agreement_fp32": top1_fp32, "max_abs_diff_vs_fp32": float(np.max(np.abs(got - want_fp32))),
         "opset": ONNX_OPSET, "policy": "uniform w8a8, BN folded", "samples": len(inputs)},
    )


def calibration_inputs(info: RunInfo | None, arch: ArchSpec, kind: str) -> torch.Tensor:
    """Inputs that set the int8 activation ranges: the run's training images, or seeded N(0,1)
    (the datasets are normalised per channel, so N(0,1) has about the right range)."""
    if kind == "dataset":
        from nas.training.data import load_dataset

        name = info.dataset if info is not None else None
        if not isinstance(name, str):
            raise OptionError("--calibration dataset: config.json names no dataset; use --calibration random")
        splits = load_dataset(name, arch.resolution, seed=0)
        return splits.train.tensors[0][:CALIBRATION_SAMPLES].float()
    if kind != "random":
        raise OptionError(f"calibration={kind!r} not in {{random, dataset}}")
    return verification_inputs(arch, CALIBRATION_SAMPLES, seed=VERIFY_SEED + 1)


def export_model(model: nn.Module, arch: ArchSpec, out: str | os.PathLike, formats: Sequence[str] | str | None = None,
                 *, calibration: torch.Tensor | None = None) -> list[FormatResult]:
    """Write and verify `formats` of an eval-mode model built from `arch` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and train flag
    inputs = verification_inputs(arch)
    with torch.no_grad():
        want = model(inputs).numpy()
    results: list[FormatResult] = []
    for name in parse_formats(formats):
        start, path = time.perf_counter(), out / FILE_NAMES[name]
        logger.info("exporting %s -> %s", name, path)
        if name == "json":
            arch_path, _ = save(model, arch, out)
            back = ArchSpec.from_json(arch_path.read_text())
            if back != arch or back.content_hash() != arch.content_hash():
                raise ExportError(f"json export {arch_path} does not parse back to the same architecture")
            result = FormatResult("json", arch_path, arch_path.stat().st_size,
                                  "parsed back: equal ArchSpec and content hash", 0.0)
        elif name in FP32_CRITERIA:
            result = _checked_fp32(name, path, _fp32_outputs(name, model, out, inputs), want)
        else:
            int8_inputs = verification_inputs(arch, INT8_CHECK_SAMPLES)
            with torch.no_grad():
                int8_want = model(int8_inputs).numpy()
            result = _onnx_int8(model, path, int8_inputs, int8_want,
                                calibration if calibration is not None else calibration_inputs(None, arch, "random"))
        result.seconds = time.perf_counter() - start
        logger.info("%s verified: max |diff| %.3g (%s)", name, result.max_abs_diff, result.criterion)
        results.append(result)
    return results


def measure_exported(arch: ArchSpec, table_metadata: dict[str, Any], settings: Any = None) -> dict[str, Any]:
    """End-to-end latency at batch 1 on the latency table's backend and thread count, here."""
    from predictors.latency import LATENCY_BACKENDS, LocalMeasurer

    backend = str(table_metadata.get("backend", "onnxruntime"))
    if backend not in LATENCY_BACKENDS.names():
        raise OptionError(f"the table was measured with backend {backend!r}, which cannot run here "
                         f"({', '.join(LATENCY_BACKENDS.names())}); pass --no-measure")
    measurer = LocalMeasurer(backend, threads=int(table_metadata.get("threads", 1)), settings=settings)
    measurement = measurer.measure_archs([arch])[0]
    meta = measurer.metadata()
    from predictors.latency.provenance import measured_elsewhere

    return {**measurement.to_dict(), "backend": backend, "threads": meta.get("threads"),
            "device": meta.get("device"), "cpu_model": meta.get("cpu_model"), "table_device": table_metadata.get("device"),
            "not_the_tables_device": measured_elsewhere(table_metadata, meta)}


def measure_int8_file(model: nn.Module, arch: ArchSpec, path: Path, settings: Any = None) -> dict[str, Any]:
    """The exported int8 file against the fp32 model's ONNX export, ONNX Runtime CPU, 1 thread,
    batch 1, timed together (interleaved) by the project's protocol; the CPU's int8 ISA noted."""
    from predictors.latency.backends import OnnxRuntimeBackend, export_onnx, fixed_input, measure_onnx

    shape = (1, arch.in_channels, arch.resolution, arch.resolution)
    fp32 = export_onnx(copy.deepcopy(model).eval(), fixed_input(shape))
    kw = settings.to_dict() if settings is not None else {}
    fp32_ms, int8_ms = measure_onnx(OnnxRuntimeBackend(threads=1), [fp32, path.read_bytes()], shape, **kw)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    isa = "VNNI" if {"avx512_vnni", "avx_vnni"} & set(flags) else "AVX2, no VNNI" if "avx2" in flags else "other"
    return {"fp32": fp32_ms.to_dict(), "int8": int8_ms.to_dict(), "speedup": fp32_ms.median_ms / int8_ms.median_ms,
            "threads": 1, "isa": isa}


def export_run(run_dir: str | os.PathLike, formats: Sequence[str] | str | None = None,
               out: str | os.PathLike | None = None, trial: int | None = None, *, measure: bool = True,
               card: bool = True, calibration: str = "random", measure_settings: Any = None,
               progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export the best model of a run (or `trial`, when its weights are the best's) into `out`
    (default run_dir/export/), verify every format, and write MODEL_CARD.md and export.json."""
    from predictors.latency.predictor import load_latency_predictor

    info = read_run(run_dir)
    source_dir, label, trial_id = _source(info, trial)
    model = _load_consistent(source_dir)
    arch = model.spec
    out_dir = Path(out) if out is not None else info.path / "export"
    calibration_data = calibration_inputs(info, arch, calibration) if "onnx-int8" in parse_formats(formats) else None
    results = export_model(model, arch, out_dir, formats, calibration=calibration_data)
    report = ExportReport(info.path, out_dir, label, trial_id, arch, results, calibration=calibration)
    lut = info.lut_path()
    table = load_latency_predictor(lut) if lut is not None else None  # a table or a fitted latency model
    if measure and table is not None:
        if progress:
            progress("measuring end-to-end latency")
        report.measured_latency = measure_exported(arch, table.metadata, measure_settings)
    int8_item = next((item for item in results if item.format == "onnx-int8"), None)
    if measure and int8_item is not None:
        if progress:
            progress("measuring int8 vs fp32 on ONNX Runtime")
        int8_item.details["latency"] = measure_int8_file(model, arch, int8_item.path, measure_settings)
    elif measure:
        info.notes.append("no latency table in config.json: nothing to measure against")
    if card:
        from nas.artifacts.model_card import write_model_card

        report.card_path = write_model_card(info, report, model, table)
    (out_dir / "export.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
