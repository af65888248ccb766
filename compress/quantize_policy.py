"""`QuantPolicy`: per-layer bit-widths as data (HAQ's mixed precision), with a JSON round trip.

Encoding (one clean set of values, checked on construction):

- weight bits: an int in 2..8 (linear, symmetric, per output channel), or the strings
  ``"binary"`` (sign * mean|w| per channel, BWN/XNOR-Net) and ``"ternary"`` (TWN, threshold
  0.7 * mean|w|). The int 1 is refused in favour of ``"binary"`` so each scheme has one name.
- activation bits: an int in 2..8 (linear, asymmetric, per tensor). Binary/ternary activations
  are not offered: HAQ and the hardware models it targets quantize activations linearly.

Layer names are module paths from ``model.named_modules()`` (``"blocks.3.expand.0"``); only
``nn.Conv2d`` and ``nn.Linear`` layers can be named. Layers a policy does not name stay float.

JSON form: the shared envelope of ``compress.policy`` with kind ``"quantize"``::

    {"schema": "hwnas-compress-policy", "schema_version": 1, "kind": "quantize", "settings": {},
     "layers": {"stem.0": {"weight_bits": 8, "activation_bits": 8},
                "blocks.0.depthwise.0": {"weight_bits": "ternary", "activation_bits": 4}}}
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from torch import nn

from compress.policy import PolicyEnvelope, PolicyError, check_layers

__all__ = [
    "ACTIVATION_BITS",
    "POLICY_KIND",
    "WEIGHT_BITS",
    "LayerBits",
    "PolicyError",
    "QuantPolicy",
    "WeightBits",
    "effective_bits",
    "quantizable_layers",
    "uniform_policy",
]

POLICY_KIND = "quantize"
INT_BITS = tuple(range(2, 9))
WEIGHT_BITS: tuple[int | str, ...] = (*INT_BITS, "binary", "ternary")
ACTIVATION_BITS: tuple[int, ...] = INT_BITS

WeightBits = int | str


class LayerBits(NamedTuple):
    weight_bits: WeightBits
    activation_bits: int


def _allowed(values: tuple) -> str:
    return "{" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values) + "}"


def _check_bits(name: str, bits: Any) -> LayerBits:
    if isinstance(bits, Mapping):
        extra = sorted(set(bits) - {"weight_bits", "activation_bits"})
        if extra or len(bits) != 2:
            raise PolicyError(
                f"quantize policy: layer {name!r}: expected keys weight_bits and activation_bits, got {sorted(bits)}"
            )
        bits = (bits["weight_bits"], bits["activation_bits"])
    if not isinstance(bits, (tuple, list)) or len(bits) != 2:
        raise PolicyError(f"quantize policy: layer {name!r}: expected (weight_bits, activation_bits), got {bits!r}")
    # numpy ints (a searcher's output) become plain ints; 4.0 is refused, not silently rounded
    weight, activation = (int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in bits)
    if isinstance(weight, (bool, float)) or weight not in WEIGHT_BITS:
        hint = " (1-bit weights are spelled 'binary')" if weight == 1 and not isinstance(weight, bool) else ""
        raise PolicyError(f"quantize policy: layer {name!r}: weight_bits={weight!r} not in {_allowed(WEIGHT_BITS)}{hint}")
    if isinstance(activation, (bool, float)) or activation not in ACTIVATION_BITS:
        raise PolicyError(
            f"quantize policy: layer {name!r}: activation_bits={activation!r} not in {_allowed(ACTIVATION_BITS)} "
            "(activations are quantized linearly; binary/ternary apply to weights only)"
        )
    return LayerBits(weight, int(activation))


def effective_bits(weight_bits: WeightBits) -> int:
    """Storage bits per weight: binary 1, ternary 2 (three levels need two bits), else the int."""
    if weight_bits == "binary":
        return 1
    if weight_bits == "ternary":
        return 2
    return int(weight_bits)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` / ``nn.Linear`` by module path, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name}


@dataclass(frozen=True)
class QuantPolicy:
    """Bits per layer: ``layers[name] = LayerBits(weight_bits, activation_bits)`` (read-only)."""

    layers: Mapping[str, LayerBits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise PolicyError(f"layers must be a mapping of layer name -> bits, got {type(self.layers).__name__}")
        checked = {}
        for name, bits in self.layers.items():
            if not isinstance(name, str) or not name:
                raise PolicyError(f"layer name {name!r} must be a non-empty module path like 'blocks.3.expand.0'")
            checked[name] = _check_bits(name, bits)
        object.__setattr__(self, "layers", MappingProxyType(checked))

    def __getitem__(self, name: str) -> LayerBits:
        return self.layers[name]

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantPolicy) and dict(self.layers) == dict(other.layers)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.layers.items())))

    def check_model(self, model: nn.Module) -> dict[str, nn.Module]:
        """The named layers' modules; raises if a name is missing or not a conv/linear layer."""
        layers = quantizable_layers(model)
        allowed: dict[str, str | None] = {
            name: f"is a {type(module).__name__}; only Conv2d and Linear layers can be quantized"
            for name, module in model.named_modules() if name
        }
        allowed.update({name: None for name in layers})
        check_layers(POLICY_KIND, self.layers, allowed)
        return {name: layers[name] for name in self.layers}

    def to_envelope(self) -> PolicyEnvelope:
        return PolicyEnvelope(POLICY_KIND, {
            n: {"weight_bits": b.weight_bits, "activation_bits": b.activation_bits} for n, b in self.layers.items()
        })

    def to_dict(self) -> dict[str, Any]:
        return self.to_envelope().to_dict()

    @classmethod
    def from_dict(cls, data: Any) -> QuantPolicy:
        envelope = PolicyEnvelope.from_dict(data, kind=POLICY_KIND)
        if envelope.settings:
            raise PolicyError(f"quantize policy: settings={envelope.settings!r}; this kind takes none (use {{}})")
        return cls(envelope.layers)

    def to_json(self, indent: int | None = 2) -> str:
        return self.to_envelope().to_json(indent)

    @classmethod
    def from_json(cls, text: str) -> QuantPolicy:
        return cls.from_dict(PolicyEnvelope.from_json(text, kind=POLICY_KIND).to_dict())

    def bits_string(self) -> str:
        """Compact log form: ``w8a8 w4a6 wTa8 ...`` in layer order (B = binary, T = ternary)."""
        short = {"binary": "B", "ternary": "T"}
        return " ".join(f"w{short.get(str(b.weight_bits), b.weight_bits)}a{b.activation_bits}"
                        for b in self.layers.values())


def uniform_policy(model: nn.Module, bits: WeightBits, activation_bits: int | None = None) -> QuantPolicy:
    """Every conv/linear layer at ``bits`` weights and ``activation_bits`` (default: ``bits``, or 8
    when ``bits`` is 'binary'/'ternary') activations."""
    if activation_bits is None:
        activation_bits = bits if isinstance(bits, int) and not isinstance(bits, bool) else 8
    return QuantPolicy({name: (bits, activation_bits) for name in quantizable_layers(model)})
