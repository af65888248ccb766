"""`nas compress deep-compression SOURCE`: Deep Compression (Han et al., ICLR 2016) of a trained
model: magnitude pruning, trained weight sharing, Huffman coding, each step fine-tuned with
distillation from the source. Writes `model.hwdc` (our file format, `compress.compressed_file`),
the decoded model as arch.json + weights.safetensors, and metrics.json (sizes stage by stage,
test accuracy after each step). `nas load FILE.hwdc` decodes such a file again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from nas.commands.common import fail_on_user_error
from nas.commands.compress import _data, _output_dir, _write, compress_app, console, read_source
from search_spaces.errors import InputFileError, OptionError

FILE_NAME = "model.hwdc"


def _check_options(sparsity: float, bits: int, fc_bits: int | None) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise OptionError(f"--sparsity {sparsity}: expected a fraction in [0, 1)")
    for flag, value in (("--bits", bits), ("--fc-bits", fc_bits)):
        if value is not None and not 1 <= value <= 8:
            raise OptionError(f"{flag} {value}: expected an integer in 1..8")


def _read_bits_file(path: Path | None) -> dict[str, int] | None:
    """A JSON object layer name -> bits (the layers of `compress.sparsity.prunable_weights`)."""
    if path is None:
        return None
    if not path.is_file():
        raise InputFileError(f"--bits-per-layer {path} does not exist (expected a JSON object: layer name -> bits)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise OptionError(f"--bits-per-layer {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        raise OptionError(f"--bits-per-layer {path}: expected a JSON object of layer name -> integer bits (1..8)")
    return data


@compress_app.command("deep-compression")
@fail_on_user_error
def deep_compression(
    source: str = typer.Argument(..., help="A run (its best/), or a model directory."),
    sparsity: float = typer.Option(0.8, help="Fraction of every conv/linear weight tensor pruned, in [0, 1)."),
    bits: int = typer.Option(5, help="Cluster-index bits per weight (1-8): 2^bits shared values per layer."),
    fc_bits: Optional[int] = typer.Option(None, help="Bits of the linear layers (default: --bits)."),
    bits_per_layer: Optional[Path] = typer.Option(None, help="JSON object: layer name -> bits (overrides)."),
    epochs: int = typer.Option(1, min=0, help="Distilled fine-tune epochs after pruning and after clustering."),
    dataset: Optional[str] = typer.Option(None, help="Default: the run's dataset."),
    weights: Optional[Path] = typer.Option(None),
    out: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
) -> None:
    """Prune, share weights, Huffman-code: model.hwdc plus the decoded model and the size table."""
    from compress.dc_sizes import size_table
    from compress.deep_compression import deep_compress
    from compress.weight_sharing import bits_policy
    from nas.rundir.model_files import save
    from nas.training import TrainConfig, distilled_finetune, evaluate

    _check_options(sparsity, bits, fc_bits)
    overrides = _read_bits_file(bits_per_layer)
    src = read_source(source, weights, need_weights=True)
    policy = bits_policy(src.model, bits, overrides, fc_bits=fc_bits)
    data = _data(src, dataset, seed)
    teacher = src.model.eval()

    def finetune(model: Any, stage: str) -> float | None:
        if not epochs:
            return None
        return distilled_finetune(model, teacher, data, TrainConfig(seed=seed), epochs=epochs).test_accuracy

    result = deep_compress(src.model, src.spec, sparsity, policy, finetune=finetune,
                           evaluate=lambda model: evaluate(model, data.test))
    out_dir = _output_dir(src, "deep_compression", out)
    (out_dir / FILE_NAME).write_bytes(result.data)
    save(result.model, src.spec, out_dir)
    metrics = {"source": source, "file": FILE_NAME, "sparsity_target": sparsity, "bits": policy,
               "finetune_epochs": epochs, **result.metrics()}
    _write(out_dir, "metrics.json", metrics)
    accuracy = result.accuracy
    console.print("\n".join(size_table(result.stages)))
    console.print(f"{out_dir / FILE_NAME}: {len(result.data):,} bytes, {metrics['compression_vs_fp32']:.1f}x smaller "
                  f"than fp32; test accuracy {accuracy['base']:.4f} -> {accuracy['decoded_file']:.4f}")
