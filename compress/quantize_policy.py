"""`QuantPolicy`: per-layer bit-widths as data (HAQ's mixed precision), with a JSON round trip.

Encoding (one clean set of values, checked on construction):

- weight bits: an int in 2..8 (linear, symmetric, per output channel), or the strings
  ``"binary"`` (sign * mean|w| per channel, BWN/XNOR-Net) and ``"ternary"`` (TWN, threshold
  0.7 * mean|w|), ``"ttq"`` (Trained Ternary Quantization: learned per-layer scales, threshold
  ``t * max|w|``, see ``compress.quantize_ttq``). The int 1 is refused in favour of ``"binary"``
  so each scheme has one name.
- activation bits: an int in 2..8 (linear, asymmetric, per tensor). Binary/ternary activations
  are not offered: HAQ and the hardware models it targets quantize activations linearly.

Two whole-policy settings, each left out of the JSON at its default (so older files read the same):

- ``"ttq_threshold"``: TTQ's ``t`` in [0, 0.5], default 0.05 (the paper's).
- ``"activation_quantizer"``: ``"linear"`` (default) or ``"dorefa"`` for every named layer, or an
  object ``{layer: "linear" | "dorefa"}`` for some of them. DoReFa (``compress.quantize_dorefa``)
  clips the input to [0, 1] and uses the layer's activation_bits on that fixed range.

Layer names are module paths from ``model.named_modules()`` (``"blocks.3.expand.0"``); only
``nn.Conv2d`` and ``nn.Linear`` layers can be named. Layers a policy does not name stay float.

JSON form: the shared envelope of ``compress.policy`` with kind ``"quantize"``::

    {"schema": "hwnas-compress-policy", "schema_version": 1, "kind": "quantize", "settings": {},
     "layers": {"stem.0": {"weight_bits": 8, "activation_bits": 8},
                "blocks.0.depthwise.0": {"weight_bits": "ternary", "activation_bits": 4}}}

    a TTQ + DoReFa policy: "settings": {"activation_quantizer": {"blocks.0.depthwise.0": "dorefa"}},
    "layers": {"blocks.0.depthwise.0": {"weight_bits": "ttq", "activation_bits": 4}, ...}
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from torch import nn

from compress.policy import PolicyEnvelope, PolicyError, check_choice, check_layers, check_number, layer_sort_key
from compress.quantize_dorefa import ACTIVATION_QUANTIZERS
from compress.quantize_ttq import TTQ_THRESHOLD

__all__ = [
    "ACTIVATION_BITS",
    "SETTINGS",
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
WEIGHT_BITS: tuple[int | str, ...] = (*INT_BITS, "binary", "ternary", "ttq")
ACTIVATION_BITS: tuple[int, ...] = INT_BITS
SETTINGS = ("activation_quantizer", "ttq_threshold")
MAX_TTQ_THRESHOLD = 0.5  # t * max|w|: beyond half the largest weight most layers would be mostly zero

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
    """Storage bits per weight: binary 1, ternary and ttq 2 (three levels need two bits), else the int."""
    if weight_bits == "binary":
        return 1
    if weight_bits in ("ternary", "ttq"):
        return 2
    return int(weight_bits)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` / ``nn.Linear`` by module path, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name}


def _check_activation_quantizer(value: Any, names: Mapping[str, Any]) -> Mapping[str, str]:
    """The layers whose inputs use DoReFa (``layer -> "dorefa"``; linear ones are not listed)."""
    if isinstance(value, str):
        check_choice(POLICY_KIND, "settings.activation_quantizer", value, ACTIVATION_QUANTIZERS)
        return MappingProxyType({name: value for name in names} if value != "linear" else {})
    if not isinstance(value, Mapping):
        raise PolicyError(f"quantize policy: settings.activation_quantizer={value!r} must be one of "
                          f"{set(ACTIVATION_QUANTIZERS)} or an object of layer name -> one of them")
    unknown = sorted(set(value) - set(names), key=str)
    if unknown:
        raise PolicyError(f"quantize policy: settings.activation_quantizer names {unknown}, which the policy's "
                          f"layers do not; name only layers it quantizes")
    for name, scheme in value.items():
        check_choice(POLICY_KIND, f"settings.activation_quantizer[{name!r}]", scheme, ACTIVATION_QUANTIZERS)
    return MappingProxyType({name: scheme for name, scheme in value.items() if scheme != "linear"})


@dataclass(frozen=True)
class QuantPolicy:
    """Bits per layer: ``layers[name] = LayerBits(weight_bits, activation_bits)`` (read-only), TTQ's
    threshold ``t``, and which layers quantize their inputs with DoReFa (``activation_quantizer``:
    "linear", "dorefa", or a mapping layer -> either; kept as the mapping of the DoReFa layers)."""

    layers: Mapping[str, LayerBits] = field(default_factory=dict)
    ttq_threshold: float = TTQ_THRESHOLD
    activation_quantizer: str | Mapping[str, str] = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise PolicyError(f"layers must be a mapping of layer name -> bits, got {type(self.layers).__name__}")
        checked = {}
        for name, bits in self.layers.items():
            if not isinstance(name, str) or not name:
                raise PolicyError(f"layer name {name!r} must be a non-empty module path like 'blocks.3.expand.0'")
            checked[name] = _check_bits(name, bits)
        object.__setattr__(self, "layers", MappingProxyType(checked))
        threshold = check_number(POLICY_KIND, "settings.ttq_threshold", self.ttq_threshold, 0.0, MAX_TTQ_THRESHOLD)
        object.__setattr__(self, "ttq_threshold", threshold)
        object.__setattr__(self, "activation_quantizer", _check_activation_quantizer(self.activation_quantizer, checked))

    def activation_scheme(self, name: str) -> str:
        """``"dorefa"`` or ``"linear"``: how layer ``name`` quantizes its input."""
        return self.activation_quantizer.get(name, "linear")

    def __getitem__(self, name: str) -> LayerBits:
        return self.layers[name]

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QuantPolicy) and dict(self.layers) == dict(other.layers)
                and self.ttq_threshold == other.ttq_threshold
                and dict(self.activation_quantizer) == dict(other.activation_quantizer))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.layers.items())), self.ttq_threshold,
                     tuple(sorted(self.activation_quantizer.items()))))

    def settings(self) -> dict[str, Any]:
        """The JSON settings: only those away from their defaults."""
        settings: dict[str, Any] = {}
        if self.ttq_threshold != TTQ_THRESHOLD:
            settings["ttq_threshold"] = self.ttq_threshold
        dorefa = self.activation_quantizer
        if dorefa and set(dorefa) == set(self.layers):
            settings["activation_quantizer"] = "dorefa"
        elif dorefa:
            settings["activation_quantizer"] = {name: dorefa[name] for name in sorted(dorefa, key=layer_sort_key)}
        return settings

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
        }, self.settings())

    def to_dict(self) -> dict[str, Any]:
        return self.to_envelope().to_dict()

    @classmethod
    def from_dict(cls, data: Any) -> QuantPolicy:
        envelope = PolicyEnvelope.from_dict(data, kind=POLICY_KIND)
        unknown = sorted(set(envelope.settings) - set(SETTINGS))
        if unknown:
            raise PolicyError(f"quantize policy: unknown setting(s) {unknown}; allowed: {list(SETTINGS)}")
        return cls(envelope.layers, **envelope.settings)

    def to_json(self, indent: int | None = 2) -> str:
        return self.to_envelope().to_json(indent)

    @classmethod
    def from_json(cls, text: str) -> QuantPolicy:
        return cls.from_dict(PolicyEnvelope.from_json(text, kind=POLICY_KIND).to_dict())

    def bits_string(self) -> str:
        """Compact log form: ``w8a8 w4a6 wTa8 wTTQa4d ...`` in layer order (B = binary, T = ternary,
        TTQ; a trailing d = DoReFa activations)."""
        short = {"binary": "B", "ternary": "T", "ttq": "TTQ"}
        return " ".join(f"w{short.get(str(b.weight_bits), b.weight_bits)}a{b.activation_bits}"
                        + ("d" if self.activation_scheme(name) == "dorefa" else "")
                        for name, b in self.layers.items())


def uniform_policy(model: nn.Module, bits: WeightBits, activation_bits: int | None = None, *,
                   ttq_threshold: float = TTQ_THRESHOLD, activation_quantizer: str = "linear") -> QuantPolicy:
    """Every conv/linear layer at ``bits`` weights and ``activation_bits`` (default: ``bits``, or 8
    when ``bits`` is 'binary'/'ternary'/'ttq') activations."""
    if activation_bits is None:
        activation_bits = bits if isinstance(bits, int) and not isinstance(bits, bool) else 8
    return QuantPolicy({name: (bits, activation_bits) for name in quantizable_layers(model)},
                       ttq_threshold=ttq_threshold, activation_quantizer=activation_quantizer)
