"""`build_model(spec)`: one pure function from an `ArchSpec` to a module, plus the per-layer shapes
that latency tables key on (computed from the spec alone, without building anything)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from search_spaces.blocks import ConvBNAct, build_block, make_activation
from search_spaces.lowrank_layers import apply_ranks
from search_spaces.spec import (
    ArchSpec,
    BlockSpec,
    HeadSpec,
    Op,
    SpecError,
    StemSpec,
    check_block_input,
    part_from_dict,
)
from search_spaces.spec_shapes import block_output_size, conv_output_size, stem_output_size
from search_spaces.spec_fields import ranks_to_string

__all__ = ["LayerShape", "Network", "block_output_size", "build_head", "build_layer", "build_model", "build_stem",
           "conv_output_size", "layer_shapes", "layer_signature", "layer_signatures", "stem_output_size"]


class Stem(nn.Sequential):
    """Conv + BN + act (+ max-pool); SqueezeNet's is a conv with a bias, unpadded, and no BN."""

    def __init__(self, spec: StemSpec, in_channels: int) -> None:
        if spec.padding is None and spec.batch_norm:
            first: nn.Module = ConvBNAct(in_channels, spec.out_channels, spec.kernel, spec.stride,
                                         activation=spec.activation)
        else:  # the same layout (conv, norm, act), so weight names do not depend on these fields
            padding = spec.kernel // 2 if spec.padding is None else spec.padding
            conv = nn.Conv2d(in_channels, spec.out_channels, spec.kernel, spec.stride, padding,
                             bias=not spec.batch_norm)
            norm = nn.BatchNorm2d(spec.out_channels) if spec.batch_norm else nn.Identity()
            first = nn.Sequential(conv, norm, make_activation(spec.activation))
        layers = [first]
        if spec.pool:
            layers.append(nn.MaxPool2d(3, 2, 1))
        super().__init__(*layers)
        apply_ranks(self, spec.ranks, "stem.ranks")


class Head(nn.Module):
    """Optional BN + act (`preact`), optional 1x1 conv, global average pool, optional hidden
    linear, dropout, classifier."""

    def __init__(self, spec: HeadSpec, in_channels: int, num_classes: int) -> None:
        super().__init__()
        channels = in_channels
        self.conv_classifier = spec.classifier == "conv"
        if self.conv_classifier:  # SqueezeNet: dropout, 1x1 conv to the classes, act, then the pool
            self.dropout = nn.Dropout(spec.dropout)
            self.classifier = nn.Sequential(nn.Conv2d(channels, num_classes, 1), make_activation(spec.activation))
            apply_ranks(self, spec.ranks, "head.ranks")
            return
        self.preact: nn.Module = nn.Identity()
        if spec.preact:
            self.preact = nn.Sequential(nn.BatchNorm2d(channels), make_activation(spec.activation))
        self.conv: nn.Module = nn.Identity()
        if spec.conv_channels:
            self.conv = ConvBNAct(in_channels, spec.conv_channels, 1, activation=spec.activation)
            channels = spec.conv_channels
        self.hidden: nn.Module = nn.Identity()
        if spec.hidden_channels:
            self.hidden = nn.Sequential(nn.Linear(channels, spec.hidden_channels), make_activation(spec.activation))
            channels = spec.hidden_channels
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(channels, num_classes)
        apply_ranks(self, spec.ranks, "head.ranks")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_classifier:
            return self.classifier(self.dropout(x)).mean((2, 3))
        x = self.conv(self.preact(x)).mean((2, 3))
        return self.classifier(self.dropout(self.hidden(x)))


class Network(nn.Module):
    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = build_stem(spec)
        channels = spec.stem.out_channels
        blocks = []
        for index, block in enumerate(spec.blocks):
            blocks.append(build_block(block, channels, f"blocks[{index}].ranks"))
            channels = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = build_head(spec)
        initialise_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_stem(spec: ArchSpec) -> nn.Module:
    return Stem(spec.stem, spec.in_channels)


def build_head(spec: ArchSpec) -> nn.Module:
    return Head(spec.head, spec.blocks[-1].out_channels, spec.num_classes)


def build_model(spec: ArchSpec) -> Network:
    return Network(spec)


def initialise_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation of every module in `model`: He (fan-out) convs, unit BN,
    small linear weights."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            if module.bias is not None:  # the first factor of a low-rank linear has none
                nn.init.zeros_(module.bias)


@dataclass(frozen=True, slots=True)
class LayerShape:
    """Where a layer sits and what it sees. `signature` (the part's spec and its input shape) is
    what a latency table keys on: equal signatures build identical modules."""

    name: str  # "stem", "blocks.3", "head"
    kind: str  # "stem" | "block" | "head"
    in_channels: int
    in_size: int
    out_channels: int  # for the head: the number of classes
    out_size: int
    part: StemSpec | BlockSpec | HeadSpec

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.in_size, self.in_size)

    @property
    def signature(self) -> str:
        return layer_signature(self.part, self.in_channels, self.in_size, self.out_channels)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "in_channels": self.in_channels, "in_size": self.in_size,
            "out_channels": self.out_channels, "out_size": self.out_size, "part": self.part.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> LayerShape:
        """Rebuild a layer from JSON (what a device agent receives), validating every field and
        recomputing the output shape rather than trusting the sender."""
        if not isinstance(data, dict):
            raise SpecError(f"layer must be a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        parts = {"stem": StemSpec, "block": BlockSpec, "head": HeadSpec}
        if kind not in parts:
            raise SpecError(f"layer.kind={kind!r} not in {{{', '.join(parts)}}}")
        part = part_from_dict(parts[kind], data.get("part"), "layer.part")
        for key, minimum in (("in_channels", 1), ("in_size", 1), ("out_channels", 1)):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise SpecError(f"layer.{key}={value!r} must be an integer >= {minimum}")
        in_channels, in_size = data["in_channels"], data["in_size"]
        if kind == "block":
            out_channels, out_size = part.out_channels, block_output_size(part, in_size)
            if part.op is Op.SHUFFLE and part.stride == 1 and in_channels != part.out_channels:
                raise SpecError("layer: a stride-1 'shuffle' unit needs in_channels == part.out_channels")
            check_block_input(part, in_channels, in_size, "layer.part")
        elif kind == "stem":
            out_channels, out_size = part.out_channels, stem_output_size(part, in_size)
            if out_size < 1:
                raise SpecError(f"layer.in_size={in_size} is too small for the stem's unpadded conv")
        else:
            out_channels, out_size = data["out_channels"], 1
        return cls(str(data.get("name", kind)), kind, in_channels, in_size, out_channels, out_size, part)


def build_layer(layer: LayerShape, initialise: bool = True) -> nn.Module:
    """The module for one layer on its own (what a latency table measures). `initialise=False`
    skips weight initialisation (slow on meta tensors, pointless when only shapes matter)."""
    if isinstance(layer.part, BlockSpec):
        module = build_block(layer.part, layer.in_channels)
    elif isinstance(layer.part, StemSpec):
        module = Stem(layer.part, layer.in_channels)
    else:
        module = Head(layer.part, layer.in_channels, layer.out_channels)
    if initialise:
        initialise_weights(module)
    return module


@lru_cache(maxsize=65536)
def layer_signature(part: StemSpec | BlockSpec | HeadSpec, in_channels: int, in_size: int, out_channels: int) -> str:
    """The latency-table key of a layer: its part's compact string and its input shape. Cached:
    a search asks for the same few thousand (part, shape) pairs millions of times."""
    shape = f"{in_channels}x{in_size}x{in_size}"
    if isinstance(part, BlockSpec):
        return f"{part.to_string()}@{shape}"
    if isinstance(part, StemSpec):
        pool = "_pool" if part.pool else ""
        # padding and BN appear only when not the defaults, so older tables keep their keys
        extra = ("" if part.padding is None else f"_p{part.padding}") + ("" if part.batch_norm else "_nobn")
        ranks = f"_{ranks_to_string(part.ranks)}" if part.ranks else ""
        return f"stem_k{part.kernel}_c{part.out_channels}_s{part.stride}{extra}_{part.activation.value}{pool}{ranks}@{shape}"
    # dropout is absent from inference, so it is not part of the latency signature
    preact = "preact_" if part.preact else ""
    ranks = f"_{ranks_to_string(part.ranks)}" if part.ranks else ""
    if part.classifier == "conv":
        return f"head_convclassifier_{part.activation.value}_classes{out_channels}{ranks}@{shape}"
    return (
        f"head_{preact}conv{part.conv_channels or 0}_hidden{part.hidden_channels or 0}_{part.activation.value}"
        f"_classes{out_channels}{ranks}@{shape}"
    )


def _walk(spec: ArchSpec) -> Iterator[tuple[str, str, int, int, int, int, StemSpec | BlockSpec | HeadSpec]]:
    """(name, kind, in_channels, in_size, out_channels, out_size, part) of every layer in order."""
    size = spec.resolution
    stem_out = stem_output_size(spec.stem, size)
    yield "stem", "stem", spec.in_channels, size, spec.stem.out_channels, stem_out, spec.stem
    channels, size = spec.stem.out_channels, stem_out
    for index, block in enumerate(spec.blocks):
        out_size = block_output_size(block, size)
        yield f"blocks.{index}", "block", channels, size, block.out_channels, out_size, block
        channels, size = block.out_channels, out_size
    yield "head", "head", channels, size, spec.num_classes, 1, spec.head


def layer_shapes(spec: ArchSpec) -> list[LayerShape]:
    return [LayerShape(*layer) for layer in _walk(spec)]


def layer_signatures(spec: ArchSpec) -> list[tuple[str, str]]:
    """(layer name, table key) per layer, without building `LayerShape`s (the predictor's hot path)."""
    return [(name, layer_signature(part, c, size, out_c)) for name, _, c, size, out_c, _, part in _walk(spec)]
