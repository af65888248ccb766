"""`nas compress quantize|prune|scale SOURCE`: shrink a found (or published) model further.

SOURCE is a run (`runs/NAME`, meaning its `best/`), a model directory with arch.json +
weights.safetensors, a spec JSON file, or `zoo:NAME` (no weights: scale, and quantize with
`--epochs 0`, random init and BN statistics from the calibration batches). Results land in
`<run>/compress/<kind>/` (or `--out`): the policy JSON, arch.json, weights.safetensors and
metrics.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from search_spaces.errors import InputFileError, OptionError
from nas.commands.common import fail_on_user_error, load_arch, make_measurer

console = Console()
logger = logging.getLogger(__name__)
compress_app = typer.Typer(no_args_is_help=True, help="Quantize (HAQ), prune or compound-scale a model.")


def register(app: typer.Typer) -> None:
    app.add_typer(compress_app, name="compress")


@dataclass
class Source:
    spec: Any
    model: Any | None  # trained model when weights exist
    run_dir: Path | None
    config: dict[str, Any]


def read_source(source: str, weights: Path | None = None, *, need_weights: bool) -> Source:
    from nas.rundir.files import RunDirectory
    from nas.rundir.model_files import ARCH_FILE, load

    if source.startswith("zoo:"):
        if need_weights:
            raise OptionError(f"{source} has no trained weights; compress a run's best/ or pass a model directory")
        return Source(load_arch(source), None, None, {})
    path = Path(source)
    if (path / "config.json").is_file() and (path / "best").is_dir():
        path = path / "best"
    run_dir = path.parent if (path.parent / "config.json").is_file() else None
    config = RunDirectory(run_dir).read_config() if run_dir else {}
    has_weights = weights is not None or (path.is_dir() and (path / "weights.safetensors").is_file())
    if has_weights:
        model = load(path, weights)
        return Source(model.spec, model, run_dir, config)
    if need_weights:
        raise InputFileError(f"{path}: no weights.safetensors (pass --weights or a model directory)")
    spec_path = path / ARCH_FILE if path.is_dir() else path
    return Source(load_arch(str(spec_path)), None, run_dir, config)


def _output_dir(source: Source, kind: str, out: Path | None) -> Path:
    directory = out or (source.run_dir / "compress" / kind if source.run_dir else Path("runs") / "compress" / kind)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _data(source: Source, dataset: str | None, seed: int):
    from nas.training.data import load_dataset

    name = dataset or source.config.get("dataset")
    if not name:
        raise OptionError("--dataset is required (the source is not inside a run directory that names one)")
    return load_dataset(name, source.spec.resolution, seed=seed)


def _write(out: Path, name: str, data: Any) -> None:
    (out / name).write_text(json.dumps(data, indent=2) + "\n")


@compress_app.command("scale")
@fail_on_user_error
def scale(
    source: str = typer.Argument(..., help="zoo:NAME, a spec JSON, a model directory or a run."),
    out: Path = typer.Option(..., help="Where to write the scaled spec (JSON)."),
    width: Optional[float] = typer.Option(None, help="Width multiplier (channels, rounded to multiples of 8)."),
    depth: Optional[float] = typer.Option(None, help="Depth multiplier (repeats per stage, rounded up)."),
    resolution: Optional[int] = typer.Option(None, help="Input resolution in pixels."),
    phi: Optional[float] = typer.Option(None, help="Compound coefficient (with --alpha/--beta/--gamma)."),
    alpha: float = typer.Option(1.2, help="Depth base (EfficientNet: 1.2)."),
    beta: float = typer.Option(1.1, help="Width base (EfficientNet: 1.1)."),
    gamma: float = typer.Option(1.15, help="Resolution base (EfficientNet: 1.15)."),
    latency_budget: Optional[float] = typer.Option(None, help="ms: choose the largest phi that fits (measured)."),
    backend: str = typer.Option("onnxruntime", help="Where --latency-budget is measured."),
    threads: int = typer.Option(1, min=1),
) -> None:
    """EfficientNet compound scaling: explicit multipliers, a phi, or the largest phi under a budget."""
    from compress.scale import compound_scale, fit_phi_to_budget, scale_spec
    from predictors.size_limits import check_size

    spec = read_source(source, need_weights=False).spec
    explicit = any(value is not None for value in (width, depth, resolution))
    if explicit + (phi is not None) + (latency_budget is not None) != 1:
        raise OptionError("give exactly one of: --width/--depth/--resolution, --phi, or --latency-budget")
    details: dict[str, Any] = {}
    if explicit:
        scaled = scale_spec(spec, 1.0 if width is None else width, 1.0 if depth is None else depth, resolution)
    elif phi is not None:
        scaled = compound_scale(spec, alpha, beta, gamma, phi)
    else:
        measurer = make_measurer(backend, threads)

        def measured_ms(candidate: Any) -> float:
            check_size(candidate, source=f"phi grid point {candidate.name or 'spec'}")
            return measurer.measure_archs([candidate])[0].median_ms

        fit = fit_phi_to_budget(spec, alpha, beta, gamma, measured_ms, latency_budget, phi_min=-2.0, phi_max=3.0,
                                phi_step=0.25)
        scaled, details = fit.spec, {"phi": fit.phi, "latency_ms": fit.latency_ms}
    check_size(scaled, source="the scaled spec")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(scaled.to_json() + "\n")
    from predictors.cost import count

    before, after = count(spec), count(scaled)
    console.print(f"{out}: {len(spec.blocks)} -> {len(scaled.blocks)} blocks, resolution {spec.resolution} -> "
                  f"{scaled.resolution}, params {before.params:,} -> {after.params:,}, MACs {before.macs:,} -> "
                  f"{after.macs:,}" + (f"; phi {details['phi']:.2f} at {details['latency_ms']:.3f} ms" if details else ""))


@compress_app.command("prune")
@fail_on_user_error
def prune(
    source: str = typer.Argument(..., help="A run (its best/), or a model directory."),
    ratio: Optional[float] = typer.Option(None, help="Uniform prune ratio for every prunable unit."),
    policy: Optional[Path] = typer.Option(None, help="A prune policy JSON."),
    budget_macs: Optional[int] = typer.Option(None, help="Search per-layer ratios under this many MACs."),
    trials: int = typer.Option(20, min=1, help="Policy-search evaluations (with --budget-macs)."),
    criterion: str = typer.Option("l1", help="l1 | bn | fpgm"),
    epochs: int = typer.Option(3, min=0, help="Fine-tune epochs with distillation from the unpruned model."),
    dataset: Optional[str] = typer.Option(None, help="Default: the run's dataset."),
    weights: Optional[Path] = typer.Option(None),
    out: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
    measure: bool = typer.Option(True, help="Measure latency before/after on ONNX Runtime (1 thread)."),
) -> None:
    """Remove channels physically (valid smaller spec + weights), then fine-tune with distillation."""
    from compress.prune import plan_prune
    from compress.prune import prune as prune_weights
    from nas.rundir.model_files import save
    from nas.training import TrainConfig, distilled_finetune, evaluate
    from predictors.cost import count
    from search_spaces.build import build_model

    src = read_source(source, weights, need_weights=True)
    if (ratio is not None) + (policy is not None) + (budget_macs is not None) != 1:
        raise OptionError("give exactly one of --ratio, --policy or --budget-macs")
    data = _data(src, dataset, seed)
    state = {k: v.detach().clone() for k, v in src.model.state_dict().items()}
    chosen, report = _prune_policy(src, data, state, ratio, policy, budget_macs, criterion, trials, seed)
    pruned_spec, pruned_state = prune_weights(src.spec, chosen, state)
    model = build_model(pruned_spec)
    model.load_state_dict(pruned_state, strict=True)
    accuracy_before_finetune = evaluate(model, data.val)
    train_report = distilled_finetune(model, src.model, data, TrainConfig(seed=seed), epochs=epochs) if epochs else None
    out_dir = _output_dir(src, "prune", out)
    chosen.save(out_dir / "policy.json")
    save(model, pruned_spec, out_dir)
    base, pruned = count(src.spec), count(pruned_spec)
    metrics: dict[str, Any] = {
        "params": [base.params, pruned.params], "macs": [base.macs, pruned.macs],
        "val_accuracy_unpruned": evaluate(src.model, data.val),
        "val_accuracy_pruned_before_finetune": accuracy_before_finetune,
        "val_accuracy": train_report.val_accuracy if train_report else accuracy_before_finetune,
        "test_accuracy": train_report.test_accuracy if train_report else None,
        "finetune_epochs": epochs, "search": report.to_dict() if report and hasattr(report, "to_dict") else None,
        "changed_widths": {name: list(widths) for name, widths in plan_prune(src.spec, chosen).widths.items()},
    }
    if measure:  # both specs interleaved in one session
        measured = make_measurer("onnxruntime", 1).measure_archs([src.spec, pruned_spec])
        metrics["latency_ms_onnxruntime_1thread"] = [m.median_ms for m in measured]
    _write(out_dir, "metrics.json", metrics)
    console.print(f"{out_dir}: params {base.params:,} -> {pruned.params:,}, MACs {base.macs:,} -> {pruned.macs:,}, "
                  f"val accuracy {metrics['val_accuracy_unpruned']:.4f} -> {metrics['val_accuracy']:.4f}"
                  + (f", latency {metrics['latency_ms_onnxruntime_1thread'][0]:.3f} -> "
                     f"{metrics['latency_ms_onnxruntime_1thread'][1]:.3f} ms" if measure else ""))


def _prune_policy(src: Source, data: Any, state: dict[str, Any], ratio: float | None, policy: Path | None,
                  budget_macs: int | None, criterion: str, trials: int, seed: int) -> tuple[Any, Any]:
    """The policy `nas compress prune` applies, and the search report when it searched for it."""
    from compress.prune import PrunePolicy
    from compress.prune_search import search_prune_policy
    from nas.training.train import evaluate
    from search_spaces.build import build_model

    if ratio is not None:
        return PrunePolicy.uniform(src.spec, ratio, criterion), None
    if policy is not None:
        return PrunePolicy.load(policy), None

    def score(spec, state_dict) -> float:
        model = build_model(spec)
        model.load_state_dict(state_dict)
        return evaluate(model, data.val)

    return search_prune_policy(src.spec, state, score, budget_macs=budget_macs, criterion=criterion,
                               trials=trials, seed=seed)


@compress_app.command("quantize")
@fail_on_user_error
def quantize(
    source: str = typer.Argument(..., help="A run (its best/), a model directory, a spec JSON or zoo:NAME "
                                           "(without weights: random init, BN statistics from the calibration "
                                           "batches; --epochs 0)."),
    bits: Optional[int] = typer.Option(None, help="Uniform weight and activation bits (2-8)."),
    policy: Optional[Path] = typer.Option(None, help="A quantization policy JSON."),
    search: bool = typer.Option(False, "--search", help="HAQ's DDPG agent under --size-ratio or --latency-budget."),
    size_ratio: float = typer.Option(0.5, help="--search budget: weight bits as a fraction of all-8-bit."),
    latency_budget: Optional[float] = typer.Option(None, help="--search budget instead: ms on ONNX Runtime (1 thread, "
                                                              "batch 1), per layer int8 or fp32 (predicted, then "
                                                              "measured)."),
    lut: Optional[Path] = typer.Option(None, help="With --latency-budget: an int8-aware latency table (nas lut build "
                                                  "--precision int8); default: a per-layer table measured here."),
    episodes: int = typer.Option(60, min=1, help="--search episodes."),
    epochs: int = typer.Option(2, min=0, help="Quantization-aware fine-tune epochs with distillation."),
    dataset: Optional[str] = typer.Option(None, help="Default: the run's dataset."),
    weights: Optional[Path] = typer.Option(None),
    resolution: Optional[int] = typer.Option(None, min=8, help="Input size of a source without weights "
                                                               "(default: its spec's)."),
    calibration_kind: str = typer.Option("data", "--calibration",
                                         help="data: --dataset's training images; random: seeded N(0,1) images "
                                              "(no dataset needed; no accuracy figures)."),
    measure: bool = typer.Option(True, help="All 8-bit: time model_int8.onnx against model_fp32.onnx on ONNX "
                                            "Runtime (1 thread, batch 1, interleaved) into metrics.json."),
    out: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
) -> None:
    """Mixed-precision (HAQ) or uniform fake-quantization, QAT with distillation; when all 8-bit,
    model_fp32.onnx and model_int8.onnx (int8 graph, checked against fake-quant) beside the usual files."""
    from compress.quantize import prepare_qat
    from compress.quantize_cost import bitfusion_cost, layer_infos, policy_weight_bits
    from nas.training import TrainConfig, distilled_finetune, evaluate

    if (bits is not None) + (policy is not None) + search != 1:
        raise OptionError("give exactly one of --bits, --policy or --search")
    if calibration_kind not in ("data", "random"):
        raise OptionError(f"--calibration {calibration_kind!r}: expected 'data' or 'random'")
    src = read_source(source, weights, need_weights=False)
    if resolution is not None and src.model is None:
        src.spec = src.spec.replace(resolution=resolution)
    data = _data(src, dataset, seed) if calibration_kind == "data" or dataset or src.config.get("dataset") else None
    if data is None and (epochs or search):
        raise OptionError("--epochs > 0 and --search need a dataset (--dataset, or a run that names one)")
    if src.model is None and (epochs or search):
        raise OptionError(f"{source} has no trained weights: only --epochs 0 with --bits or --policy")
    shape = (1, src.spec.in_channels, src.spec.resolution, src.spec.resolution)
    calibration = data.calibration_batches(seed) if calibration_kind == "data" else _random_batches(shape, seed, 4)
    fp32 = (src.model if src.model is not None else _random_model(src.spec, calibration, seed)).eval()
    if latency_budget is not None and not search:
        raise OptionError("--latency-budget is a --search budget; add --search")
    if latency_budget is not None:
        from nas.commands.quantize_latency import latency_search

        chosen, report, cost = latency_search(fp32, lambda q: evaluate(q, data.val), calibration, shape,
                                              latency_budget, lut, episodes, seed)
    else:
        chosen, report = _quant_policy(fp32, data, calibration, bits, policy, size_ratio, episodes, seed)
    qmodel = prepare_qat(fp32, chosen, calibration=calibration)
    train_report = distilled_finetune(qmodel, fp32, data, TrainConfig(seed=seed), epochs=epochs) if epochs else None
    qmodel.eval()
    out_dir = _output_dir(src, "quantize", out)
    _save_quantized(out_dir, chosen, src.spec, qmodel)
    metrics: dict[str, Any] = {
        "policy": chosen.bits_string(), "source": source, "calibration": calibration_kind,
        "weight_bits": policy_weight_bits(fp32, chosen), "weight_bits_fp32": policy_weight_bits(fp32),
        "bitfusion_cycles": bitfusion_cost(layer_infos(fp32, shape), chosen).cycles,
        "val_accuracy_fp32": evaluate(fp32, data.val) if data else None,
        "val_accuracy": evaluate(qmodel, data.val) if data else None,
        "test_accuracy": train_report.test_accuracy if train_report else None,
        "qat_epochs": epochs, "search": report if isinstance(report, dict) else None,
        "cost_sources": {"weight_bits": "exact", "bitfusion_cycles": "simulated (BitFusion-like accelerator model)",
                         "latency, latency_mode.*.measured_ms": "measured (ONNX Runtime)",
                         "latency_mode.*.predicted_ms": "predicted (latency table)"},
    }
    if all(layer == (8, 8) for layer in chosen.layers.values()):
        check = data.val.tensors[0][:16] if data else _random_batches(shape, seed + 1, 2)[0]
        # the latency mode times this policy with uniform int8 and fp32 below, in one interleaved run
        metrics.update(_write_onnx_pair(out_dir, fp32, qmodel, shape, check, measure and latency_budget is None))
        if latency_budget is not None and measure:
            from nas.commands.quantize_latency import measure_chosen

            metrics["latency_mode"] = measure_chosen(out_dir, fp32, chosen, calibration, shape, cost, latency_budget,
                                                     check)
    _write(out_dir, "metrics.json", metrics)
    accuracy = (f"; val accuracy {metrics['val_accuracy_fp32']:.4f} -> {metrics['val_accuracy']:.4f}" if data else "")
    latency = (f"; ONNX Runtime 1 thread: fp32 {metrics['latency']['fp32']['median_ms']:.3f} ms, int8 "
               f"{metrics['latency']['int8']['median_ms']:.3f} ms" if metrics.get("latency") else "")
    mode = metrics.get("latency_mode")
    if mode:
        latency = (f"; ONNX Runtime 1 thread: this policy predicted {mode['haq']['predicted_ms']:.3f} ms, measured "
                   f"{mode['haq']['measured_ms']:.3f} ms (uniform int8 {mode['uniform_int8']['measured_ms']:.3f}, "
                   f"fp32 {mode['fp32']['measured_ms']:.3f}; budget {latency_budget:g} ms)")
    console.print(f"{out_dir}: {metrics['policy']}; weight bits {metrics['weight_bits']:,} "
                  f"(fp32 {metrics['weight_bits_fp32']:,}){accuracy}{latency}")


def _random_batches(shape: tuple[int, ...], seed: int, count: int, batch: int = 8) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape[1:], generator=generator) for _ in range(count)]


def _random_model(spec: Any, calibration: list, seed: int) -> Any:
    """A model without weights: seeded random init, BN running statistics from train-mode passes
    over the calibration batches (momentum 0.1, as `bench.int8`)."""
    import torch

    from search_spaces.build import build_model

    torch.manual_seed(seed)
    model = build_model(spec).train()
    with torch.no_grad():
        for batch in calibration:
            model(batch)
    return model.eval()


def _write_onnx_pair(out_dir: Path, fp32: Any, qmodel: Any, shape: tuple[int, ...], check: Any,
                     measure: bool) -> dict[str, Any]:
    """model_fp32.onnx and model_int8.onnx (checked against fake-quant), sizes, and their latency."""
    import copy

    from compress.quantize_export import check_qdq_export, export_qdq, measure_int8_latency
    from compress.quantize_onnx import optimized_op_counts, summarize_ops
    from predictors.latency.backends import export_onnx, fixed_input

    int8 = export_qdq(qmodel, shape, check_inputs=check)
    (out_dir / "model_int8.onnx").write_bytes(int8)
    (out_dir / "model_fp32.onnx").write_bytes(export_onnx(copy.deepcopy(fp32).eval(), fixed_input(shape)))
    result: dict[str, Any] = {
        "int8_onnx": "model_int8.onnx", "fp32_onnx": "model_fp32.onnx",
        "int8_bytes": len(int8), "fp32_bytes": (out_dir / "model_fp32.onnx").stat().st_size,
        "int8_export_check": check_qdq_export(qmodel, int8, check).to_dict(),
        "int8_ort_ops": summarize_ops(optimized_op_counts(int8)),
    }
    if measure:
        timed = measure_int8_latency(fp32, qmodel, shape, int8_model=int8)
        result["latency"] = {key: timed[key] for key in ("fp32", "int8", "speedup", "backend")}
    return result


def _quant_policy(fp32: Any, data: Any | None, calibration: list, bits: int | None, policy: Path | None,
                  size_ratio: float, episodes: int, seed: int) -> tuple[Any, dict[str, Any] | None]:
    """The policy `nas compress quantize` applies, and HAQ's report when it searched for it."""
    from compress.haq import search_quant_policy
    from compress.quantize_cost import policy_weight_bits
    from compress.quantize_policy import QuantPolicy, uniform_policy
    from nas.training.train import evaluate

    if bits is not None:
        return uniform_policy(fp32, bits), None
    if policy is not None:
        return QuantPolicy.from_json(policy.read_text()), None
    budget = int(size_ratio * policy_weight_bits(fp32, uniform_policy(fp32, 8)))
    return search_quant_policy(fp32, lambda q: evaluate(q, data.val), calibration=calibration,
                               budget_weight_bits=budget, episodes=episodes, seed=seed)


def _save_quantized(out_dir: Path, chosen: Any, spec: Any, qmodel: Any) -> None:
    """policy.json, arch.json and the QAT model's state as weights.safetensors."""
    from nas.rundir.files import save_weights

    (out_dir / "policy.json").write_text(chosen.to_json() + "\n")
    (out_dir / "arch.json").write_text(spec.to_json() + "\n")
    save_weights(out_dir / "weights.safetensors", qmodel.state_dict())
