"""The Deep Compression pipeline (Han et al., ICLR 2016): magnitude pruning, fine-tune with the
masks kept; trained weight sharing, fine-tune the centroids; Huffman-coded file.

Training is the caller's: `finetune(model, stage)` (the project's distilled fine-tune; this package
cannot import `nas.training`), which may return the fine-tuned model's accuracy (the train loop
evaluates the test split anyway, so it is not evaluated twice), and `evaluate(model) -> accuracy`,
so the CLI and the benchmark study run the same steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress.compressed_file import DecodedModel, decode, encode
from compress.dc_sizes import StageSize, stage_sizes
from compress.sparsity import apply_masks, magnitude_masks, sparsity_of
from compress.weight_sharing import clustered_tensors, remove_sharing, share_weights
from search_spaces.build import build_model
from search_spaces.spec import ArchSpec


@dataclass
class DeepCompressionResult:
    model: nn.Module                 # plain weights holding the clustered values
    data: bytes                      # the .hwdc file
    stages: list[StageSize]
    accuracy: dict[str, float] = field(default_factory=dict)  # after each step (when `evaluate` was given)
    sparsity: float = 0.0            # fraction of zeros over all conv/linear weights

    def metrics(self) -> dict[str, Any]:
        fp32, huffman = self.stages[0], self.stages[-1]
        coded = huffman.parts["indices"] + huffman.parts["gaps"] + huffman.parts["codebooks"]
        return {"sizes": [stage.to_dict(fp32.total) for stage in self.stages], "accuracy": dict(self.accuracy),
                "sparsity": self.sparsity, "file_bytes": len(self.data),
                "compression_vs_fp32": fp32.total / len(self.data),
                # the paper's measure: conv/FC weights alone (no float32 BN, biases, header)
                "weight_compression_vs_fp32": fp32.parts["weights"] / coded if coded else None}


def encode_model(model: nn.Module, arch: ArchSpec) -> bytes:
    """The .hwdc bytes of a weight-shared model: shared layers clustered, every other tensor dense,
    under the plain state-dict names and order of `arch`'s network."""
    clustered = clustered_tensors(model)
    with torch.random.fork_rng(devices=[]):
        order = list(build_model(arch).state_dict())
    dense = {}
    for name in order:
        if name not in clustered:
            # through the attribute, not state_dict(): a parametrized weight is stored as `.original`
            owner, _, attr = name.rpartition(".")
            dense[name] = getattr(model.get_submodule(owner), attr).detach().cpu().numpy()
    return encode(arch, clustered, dense, order=order)


def model_from(decoded: DecodedModel) -> nn.Module:
    """The network a decoded file describes, eval mode."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(decoded.arch)
    model.load_state_dict({name: torch.from_numpy(t.copy()) for name, t in decoded.tensors.items()},
                          strict=True)
    return model.eval()


def deep_compress(model: nn.Module, arch: ArchSpec, sparsity: float | Mapping[str, float], bits: Mapping[str, int], *,
                  finetune: Callable[[nn.Module, str], float | None] | None = None,
                  evaluate: Callable[[nn.Module], float] | None = None,
                  base_accuracy: float | None = None) -> DeepCompressionResult:
    """All three stages on a copy of `model`; the file is decoded again and checked bit for bit.
    `sparsity`: one fraction for every conv/linear, or layer name -> fraction (others stay dense).
    `base_accuracy`: the source's accuracy when the caller knows it (else evaluated)."""
    model = copy.deepcopy(model)
    accuracy: dict[str, float] = {}

    def step(name: str, train: bool) -> None:
        if evaluate:
            accuracy[name] = evaluate(model)
        if train and finetune:
            reported = finetune(model, name)
            if evaluate:
                accuracy[f"{name}_finetuned"] = reported if reported is not None else evaluate(model)

    if base_accuracy is not None:
        accuracy["base"] = base_accuracy
    else:
        step("base", False)
    apply_masks(model, magnitude_masks(model, sparsity))
    step("pruned", True)
    share_weights(model, bits)
    step("clustered", True)
    data = encode_model(model, arch)
    decoded = decode(data)
    remove_sharing(model)
    for name, tensor in model.state_dict().items():
        expected = tensor.detach().cpu().numpy()
        got = decoded.tensors[name]
        if expected.dtype != got.dtype or expected.shape != got.shape or expected.tobytes() != got.tobytes():
            raise AssertionError(f"{name}: the decoded file differs from the model")  # a bug, not bad input
    if evaluate:
        accuracy["decoded_file"] = evaluate(model_from(decoded))
    return DeepCompressionResult(model.eval(), data, stage_sizes(decoded.header, len(data)), accuracy,
                                 sparsity_of(model)["total"])
