"""Precisions a latency table holds, and what changes at the border between two of them.

A table keeps its fp32 entries where they always were (`entries`, keyed by layer signature), so
every fp32 table written before precisions existed loads and predicts unchanged. Each further
precision is a `PrecisionSection` under the file's top-level "precisions" object, and the
table's `metadata["precisions"]` lists what it holds (absent: fp32 only)::

    "metadata": {..., "precisions": ["fp32", "int8"]},
    "precisions": {"int8": {"metadata": {...how it was measured...},
                            "entries": {"<signature>": {...}},        # the layer between int8 tensors
                            "transitions": {"quantize@24x16x16": {...}, "dequantize@10": {...}},
                            "calibration": null | {...}, "validation": null | {...}}}

An int8 entry times the layer as it runs inside an int8 network: its input arrives on an int8
grid and its output leaves on one (the quantize that the next layer's input needs is charged to
the layer that produces the tensor, where ORT fuses it into the last conv). Where the precision
changes -- the float image entering an int8 stem, int8 logits leaving the network, an fp32 layer
next to an int8 one -- a *transition* is charged: QuantizeLinear or DequantizeLinear of that
tensor, measured per tensor shape. So a uniform int8 network's raw prediction is its entries plus
quantize@image plus dequantize@logits, and a mixed network's is each layer's entry at its own
precision plus one transition per precision change (`LatencyTable.layer_costs`).

Known approximation of mixed networks: an int8 layer followed by an fp32 one is charged its
entry (which quantizes its output) plus a dequantize, while the real graph would run that
layer's last conv in float and need neither; the gap is one Q + DQ of the tensor (0.02-0.03 ms
at 32 px here), so a policy's predicted latency should still be checked end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from predictors.latency.calibration import Calibration, read_calibration
from predictors.latency.measure import Measurement
from predictors.latency.table_errors import LatencyTableError
from search_spaces.build import layer_shapes
from search_spaces.spec import ArchSpec

FP32, INT8 = "fp32", "int8"
PRECISIONS = (FP32, INT8)  # what ONNX Runtime executes here; lower bits are simulated, never tabled
QUANTIZE, DEQUANTIZE = "quantize", "dequantize"


def check_precision(value: Any, what: str = "precision") -> str:
    if value not in PRECISIONS:
        raise LatencyTableError(f"{what}={value!r}: expected one of {', '.join(PRECISIONS)}")
    return value


def parse_precisions(text: str) -> tuple[str, ...]:
    """`"fp32,int8"` (the CLI's `--precision`), checked, in the canonical order, without repeats."""
    names = {check_precision(name.strip(), "--precision") for name in text.split(",") if name.strip()}
    if not names:
        raise LatencyTableError(f"--precision={text!r}: expected one or more of {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in names)


def transition_key(kind: str, shape: Sequence[int]) -> str:
    """`quantize@24x16x16`: the key of a Q or DQ of one batch-1 tensor (batch left out)."""
    return f"{kind}@{'x'.join(str(d) for d in tuple(shape)[1:])}"


class LayerCost(NamedTuple):
    """One row of a prediction: a layer at a precision, or a transition before/after it."""

    name: str  # "blocks.3", or "blocks.3 input" / "head output" for a transition
    key: str  # the table key (layer signature or transition key)
    precision: str
    ms: float


@dataclass(slots=True)
class PrecisionSection:
    """Everything a table holds for one precision other than fp32."""

    metadata: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, Measurement] = field(default_factory=dict)
    transitions: dict[str, Measurement] = field(default_factory=dict)
    calibration: Calibration | None = None
    validation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"metadata": self.metadata,
                "entries": {k: m.to_dict() for k, m in sorted(self.entries.items())},
                "transitions": {k: m.to_dict() for k, m in sorted(self.transitions.items())},
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "validation": self.validation}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> PrecisionSection:
        if not isinstance(data, dict):
            raise LatencyTableError(f"{source} must be an object, not {type(data).__name__}")
        unknown = set(data) - {"metadata", "entries", "transitions", "calibration", "validation"}
        if unknown:
            raise LatencyTableError(f"{source}: unknown keys {sorted(unknown)}; allowed: metadata, entries, "
                                    "transitions, calibration, validation")
        return cls(metadata=dict(data.get("metadata") or {}),
                   entries=read_measurements(data.get("entries", {}), f"{source}.entries"),
                   transitions=read_measurements(data.get("transitions", {}), f"{source}.transitions"),
                   calibration=read_calibration(data.get("calibration"), source),
                   validation=data.get("validation"))


def read_measurements(data: Any, source: str) -> dict[str, Measurement]:
    if not isinstance(data, dict):
        raise LatencyTableError(f"{source} must be an object of key -> measurement")
    result = {}
    for key, value in data.items():
        try:
            result[key] = Measurement.from_dict(value)
        except (TypeError, ValueError, AttributeError) as error:
            raise LatencyTableError(f"{source}[{key!r}] is invalid: {error}") from None
    return result


@lru_cache(maxsize=16384)
def arch_tensor_shapes(arch: ArchSpec) -> tuple[tuple[int, ...], ...]:
    """The input shape of each layer, then the network's output (1, classes): the tensors at which
    a precision can change."""
    layers = layer_shapes(arch)
    return (*(layer.input_shape for layer in layers), (1, layers[-1].out_channels))


def layer_precisions(names: Sequence[str], precisions: Sequence[str] | Mapping[str, str]) -> list[str]:
    """Per layer (in `names`' order) its precision: a sequence of one precision per layer, or a
    mapping from layer name ("stem", "blocks.3", "head") whose absent layers are fp32."""
    if isinstance(precisions, str):
        raise LatencyTableError(f"precisions={precisions!r}: expected one precision per layer, or "
                                "{layer name: precision}; for one precision on all layers use predict(precision=)")
    if isinstance(precisions, Mapping):
        unknown = sorted(set(precisions) - set(names))
        if unknown:
            raise LatencyTableError(f"precisions names layers {unknown} this architecture lacks; "
                                    f"its layers: {', '.join(names)}")
        chosen = [precisions.get(name, FP32) for name in names]
    else:
        chosen = list(precisions)
        if len(chosen) != len(names):
            raise LatencyTableError(f"precisions has {len(chosen)} values; this architecture has {len(names)} "
                                    f"layers ({', '.join(names)})")
    return [check_precision(p, f"precisions[{name!r}]") for name, p in zip(names, chosen)]


def transitions(shapes: Sequence[Sequence[int]], precisions: Sequence[str]) -> list[tuple[int, str, str]]:
    """(boundary index, transition key, the precision of its non-fp32 side) where the precision
    changes; boundary i is the input of layer i, boundary len(precisions) the network's output.
    The network's input and output are float."""
    borders = [FP32, *precisions, FP32]
    found = []
    for index, (before, after) in enumerate(zip(borders, borders[1:])):
        if before != after:
            kind, side = (QUANTIZE, after) if after != FP32 else (DEQUANTIZE, before)
            found.append((index, transition_key(kind, shapes[index]), side))
    return found
