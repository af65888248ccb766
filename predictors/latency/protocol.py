"""The device agent's wire protocol: limits, request validation and errors, shared by the
agent (`agent.py`) and its client (`remote.py`). No HTTP here, so it is testable on its own."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from predictors.latency.builder import MeasureSettings
from search_spaces.build import LayerShape, build_layer, layer_shapes
from search_spaces.errors import DeviceError
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, SpecError

logger = logging.getLogger(__name__)

AGENT_VERSION = "1.0"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
JSON_TYPE = "application/json"
KINDS = {"/v1/measure/layers": "layers", "/v1/measure/archs": "archs"}
ROUTES = {"/v1/info": "GET", **dict.fromkeys(KINDS, "POST")}


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """What one request may ask of the agent. Defaults fit 224x224 mobile networks with room to
    spare; they exist so a client (or a typo) cannot exhaust the device's memory or time."""

    max_body_bytes: int = 256 * 1024
    max_layers: int = 64
    max_archs: int = 8
    max_resolution: int = 1024  # a layer's in_size / an arch's resolution
    max_channels: int = 32768  # any channel count of a layer (in, mid, out, head widths, classes)
    max_input_elements: int = 4 * 2**20  # C*H*W of a layer's input; a 224 MobileNet peaks at 0.4M
    max_params: int = 50_000_000  # per layer, and per whole architecture
    max_macs: int = 20_000_000_000  # idem; EfficientNet-B0 at 224 is 0.39G
    max_warmup: int = 200
    max_blocks: int = 100
    max_block_runs: int = 100
    max_retries: int = 5
    max_runs_per_request: int = 200_000  # items * runs_per_item(settings): bounds a request's time

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentLimits:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in known})  # newer agents may add limits


def runs_per_item(settings: MeasureSettings) -> int:
    """Upper bound on the module runs one item costs under the protocol of `measure.py`."""
    return settings.warmup + settings.blocks * (settings.block_runs + 1) * (settings.retries + 1)


class RequestError(Exception):
    """A request the agent refuses; `status` is the HTTP status, the message the reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


class RemoteError(RuntimeError):
    """The agent could not be reached, refused a request, or answered nonsense."""


class RemoteAccessError(RemoteError, DeviceError):
    """The user's --device URL / --token do not work: nothing answers there, or the agent refuses
    the token (401/403). A `UserError`; other `RemoteError`s (timeouts, 5xx, nonsense) are not."""


# ---- request validation (no HTTP here, so it is testable on its own) ------------------------------


def parse_settings(data: Any, base: MeasureSettings, limits: AgentLimits) -> MeasureSettings:
    if data is None:
        return base
    if not isinstance(data, dict):
        raise RequestError(400, f"settings must be a JSON object, got {type(data).__name__}")
    names = [f.name for f in fields(MeasureSettings)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RequestError(400, f"settings: unknown field(s) {unknown}; allowed: {names}")
    for name, value in data.items():
        if name == "max_spread":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10:
                raise RequestError(400, f"settings.max_spread={value!r} must be a number in (0, 10]")
            continue
        minimum = 1 if name in ("blocks", "block_runs") else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise RequestError(400, f"settings.{name}={value!r} must be an integer >= {minimum}")
        cap = getattr(limits, f"max_{name}", None)  # a setting without a cap (none yet) is not capped
        if cap is not None and value > cap:
            raise RequestError(422, f"settings.{name}={value} exceeds the agent's limit max_{name}={cap}")
    return replace(base, **data)


def op_size(layer: LayerShape) -> tuple[int, int]:
    """(params, MACs of convs and linears) of a layer, built on the meta device: exact, and no
    memory is allocated however large the layer claims to be."""
    macs = 0

    def count(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    with torch.device("meta"):  # thread-local mode: a measurement running beside it is unaffected
        module = build_layer(layer, initialise=False).eval()
        for child in module.modules():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                child.register_forward_hook(count)
        with torch.no_grad():
            module(torch.empty(layer.input_shape))
    return sum(p.numel() for p in module.parameters()), macs


def _check_shape(layer: LayerShape, path: str, limits: AgentLimits) -> None:
    """Caps that need no module, checked first so nothing huge is ever constructed."""
    if layer.in_size > limits.max_resolution:
        raise RequestError(422, f"{path}.in_size={layer.in_size} exceeds max_resolution={limits.max_resolution}")
    part, channels = layer.part, [layer.in_channels, layer.out_channels]
    if isinstance(part, BlockSpec):
        channels.append(part.mid(layer.in_channels))
    elif isinstance(part, HeadSpec):
        channels += [part.conv_channels or 0, part.hidden_channels or 0]
    if max(channels) > limits.max_channels:
        raise RequestError(422, f"{path}: {max(channels)} channels exceed max_channels={limits.max_channels}")
    elements = layer.in_channels * layer.in_size**2
    if elements > limits.max_input_elements:
        raise RequestError(
            422, f"{path}: input {layer.in_channels}x{layer.in_size}x{layer.in_size} = {elements} elements "
            f"exceeds max_input_elements={limits.max_input_elements}")


def _check_size(params: int, macs: int, path: str, limits: AgentLimits) -> None:
    if params > limits.max_params:
        raise RequestError(422, f"{path}: {params:,} params exceed max_params={limits.max_params:,}")
    if macs > limits.max_macs:
        raise RequestError(422, f"{path}: {macs:,} MACs exceed max_macs={limits.max_macs:,}")


_ARCH_FIELD = re.compile(r"(schema_version|name|resolution|num_classes|in_channels|stem|blocks|head)\b")


def _spec_error(error: Exception, path: str, kind: str) -> RequestError:
    # Specs name their own field path ("layer.part.kernel=4 ...", "blocks[3].kernel=4 ..."); re-rooted
    # under the request ("layers[3].part.kernel=4 ...") it also tells the user which item is wrong.
    message = str(error)
    if kind == "layers" and message.startswith("layer"):
        return RequestError(400, path + message[len("layer"):])
    if kind == "archs" and _ARCH_FIELD.match(message):
        return RequestError(400, f"{path}.{message}")
    return RequestError(400, f"{path}: {message}")


def parse_items(kind: str, data: Any, limits: AgentLimits) -> list[LayerShape] | list[ArchSpec]:
    """Validate a request's `layers` or `archs` list, item by item, and check every size cap."""
    cap = limits.max_layers if kind == "layers" else limits.max_archs
    if not isinstance(data, list) or not data:
        raise RequestError(400, f"{kind} must be a non-empty JSON list")
    if len(data) > cap:
        raise RequestError(422, f"{kind}: {len(data)} items exceed the agent's limit of {cap} per request")
    items: list[Any] = []
    for index, raw in enumerate(data):
        path = f"{kind}[{index}]"
        try:  # anything a malformed spec raises is the client's error, not the agent's
            item = LayerShape.from_dict(raw) if kind == "layers" else ArchSpec.from_dict(raw)
        except (SpecError, ValueError, TypeError, KeyError) as error:
            raise _spec_error(error, path, kind) from None
        layers = [item] if kind == "layers" else layer_shapes(item)
        for layer in layers:
            _check_shape(layer, path if kind == "layers" else f"{path}.{layer.name}", limits)
        try:
            sizes = [op_size(layer) for layer in layers]
        except (RuntimeError, ValueError) as error:  # the spec passed validation but cannot run
            raise RequestError(400, f"{path} does not run on its declared input: {error}") from None
        _check_size(sum(s[0] for s in sizes), sum(s[1] for s in sizes), path, limits)
        items.append(item)
    return items
