"""Size bounds checked on a spec before any tensor is allocated.

A spec is small data that can describe an enormous network: an arch.json with 20,000-channel
blocks, or a compound-scaling phi of 50, would otherwise be built and fill the memory before
anything says no. Every command that builds a user's spec checks it here first, in closed form
(parameters, multiply-adds, the largest activation tensor at batch 1).

The defaults sit far above anything this tool targets (an EfficientNet-B7 is 66 M parameters,
37 G MACs at 600 px) and far below what takes a machine down; raise them with the environment
variables ``HWNAS_MAX_PARAMS``, ``HWNAS_MAX_MACS`` and ``HWNAS_MAX_ACTIVATION_MB``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from predictors.cost_closed_form import macs_of_spec, params_of_spec
from search_spaces.build import layer_shapes
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec, BlockSpec

__all__ = ["SizeLimits", "SpecTooLargeError", "activation_bytes", "check_size"]

ENV = {"params": "HWNAS_MAX_PARAMS", "macs": "HWNAS_MAX_MACS", "activation_mb": "HWNAS_MAX_ACTIVATION_MB"}


class SpecTooLargeError(UserError, ValueError):
    """A spec over a size bound; the message names the bound and how to raise it."""


@dataclass(frozen=True)
class SizeLimits:
    params: int = 500_000_000
    macs: int = 200_000_000_000
    activation_mb: int = 4096

    @classmethod
    def from_env(cls) -> SizeLimits:
        values = {}
        for field, variable in ENV.items():
            text = os.environ.get(variable)
            if text is None:
                continue
            try:
                value = int(float(text))
            except ValueError:
                raise SpecTooLargeError(f"{variable}={text!r}: expected a positive number") from None
            if value <= 0:
                raise SpecTooLargeError(f"{variable}={text!r}: expected a positive number")
            values[field] = value
        return cls(**values)


def activation_bytes(spec: ArchSpec) -> int:
    """float32 bytes of the largest tensor one layer reads, expands into or writes, at batch 1."""
    largest = 0
    for layer in layer_shapes(spec):
        inner = layer.part.mid(layer.in_channels) if isinstance(layer.part, BlockSpec) else 0
        largest = max(largest, layer.in_channels * layer.in_size ** 2, inner * layer.in_size ** 2,
                      layer.out_channels * layer.out_size ** 2)
    return 4 * largest


def check_size(spec: ArchSpec, limits: SizeLimits | None = None, source: str = "spec") -> None:
    """Raise `SpecTooLargeError` when `spec` exceeds a bound (default: `SizeLimits.from_env()`)."""
    limits = limits or SizeLimits.from_env()
    for name, value, bound, unit in (
        ("params", params_of_spec(spec), limits.params, ""),
        ("macs", macs_of_spec(spec), limits.macs, ""),
        ("activation_mb", activation_bytes(spec) / 2**20, limits.activation_mb, " MB"),
    ):
        if value > bound:
            raise SpecTooLargeError(f"{source}: {name} {value:,.0f}{unit} exceeds the limit {bound:,}{unit}; "
                                    f"raise it with {ENV[name]}=N if this network is intended")
