"""`ArchSpec`: the one data type every part of the system passes around.

An architecture is plain data: a stem, a list of blocks, a head, the input resolution and the
number of classes. Nothing here builds a module (see `build.py`); everything here validates,
serialises to JSON, hashes stably, and prints as compact per-block strings in timm's spirit
(`mb_k5_e6_c40_s2_se0.25_relu`).

Validation errors are `SpecError`s that name the field path, the bad value and what is allowed:
`SpecError: blocks[3].kernel=4 not in {3, 5, 7}`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from search_spaces.block_strings import block_fields_from_string, block_to_string
from search_spaces.spec_fields import check_choice, check_int, check_number, enum_value, normalize_ranks, put_ranks
from search_spaces.spec_shapes import block_output_size, check_block_input, stem_output_size
from search_spaces.spec_vocabulary import (  # re-exported: the spec's public vocabulary
    CELL_EDGES,
    CELL_OPS,
    CLASSIFIERS,
    KERNELS,
    PW_KERNELS,
    STEM_KERNELS,
    STRIDES,
    Activation,
    Op,
    SEStyle,
    SpecError,
)

GROUPED_OPS = (Op.MBCONV, Op.IRF, Op.SHUFFLE_V1)  # ops whose 1x1 convs may be grouped (`BlockSpec.groups`)


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """One block. `mid_channels` overrides `round(in_channels * expand_ratio)` when a model needs
    exact widths that no short ratio gives (MobileNetV3, GhostNet, pruned models). `edges` holds
    the 6 edge ops of a `cell` (names from `CELL_OPS`, in `CELL_EDGES` order) and is empty for
    every other op; it is left out of the JSON when empty, so older specs keep their hashes.

    `groups` (ops `mbconv`, `irf`, `shufflev1`): the pointwise 1x1 convs are grouped convs and a
    channel shuffle follows the first (ShuffleNet V1, FBNet's `_g2` ops). At 1 (the default) it is
    left out of the JSON, so specs written before it existed keep their JSON and content hash.
    `ranks` (conv name inside the block -> rank, or [r_in, r_out]): those convs are built
    low-rank (`search_spaces.lowrank_layers`); absent from the JSON when empty, like `groups`."""

    op: Op
    out_channels: int
    stride: int = 1
    kernel: int = 3
    expand_ratio: float = 1.0
    mid_channels: int | None = None
    se_ratio: float = 0.0
    se_style: SEStyle = SEStyle.EFFICIENTNET
    activation: Activation = Activation.RELU
    edges: tuple[str, ...] = ()
    groups: int = 1
    ranks: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        self.validate("block")

    def validate(self, path: str) -> None:
        object.__setattr__(self, "op", enum_value(Op, self.op, f"{path}.op"))
        object.__setattr__(self, "activation", enum_value(Activation, self.activation, f"{path}.activation"))
        object.__setattr__(self, "se_style", enum_value(SEStyle, self.se_style, f"{path}.se_style"))
        check_int(self.out_channels, f"{path}.out_channels", minimum=1)
        check_choice(self.stride, STRIDES, f"{path}.stride")
        check_choice(self.kernel, PW_KERNELS if self.op is Op.PW else KERNELS, f"{path}.kernel")
        check_number(self.expand_ratio, f"{path}.expand_ratio", low=0.0, high=16.0, low_open=True)
        if self.mid_channels is not None:
            check_int(self.mid_channels, f"{path}.mid_channels", minimum=1)
        check_number(self.se_ratio, f"{path}.se_ratio", low=0.0, high=1.0)
        # 6 and 6.0 must serialise (and hash) identically
        object.__setattr__(self, "expand_ratio", float(self.expand_ratio))
        object.__setattr__(self, "se_ratio", float(self.se_ratio))
        check_int(self.groups, f"{path}.groups", minimum=1)
        object.__setattr__(self, "ranks", normalize_ranks(self.ranks, f"{path}.ranks"))
        if self.groups != 1 and self.op not in GROUPED_OPS:
            raise SpecError(f"{path}.groups={self.groups} must be 1 for op '{self.op.value}' "
                            f"(grouped 1x1 convs: {', '.join(op.value for op in GROUPED_OPS)})")
        if self.op in (Op.DSCONV, Op.PW):
            # MobileNetV1's block and a plain 1x1 conv have no expansion and no SE: one canonical
            # form, one hash.
            for name, plain in (("expand_ratio", 1.0), ("mid_channels", None), ("se_ratio", 0.0)):
                if getattr(self, name) != plain:
                    raise SpecError(f"{path}.{name}={getattr(self, name)!r} must be {plain} for op '{self.op.value}'")
        if self.op is Op.SHUFFLE_V1 and self.se_ratio:
            raise SpecError(f"{path}.se_ratio={self.se_ratio!r} must be 0.0 for op 'shufflev1'")
        if self.op is Op.FIRE and (self.se_ratio or self.out_channels < 2):
            # both expand branches need a channel; the paper's module has no SE
            name, value = ("se_ratio", self.se_ratio) if self.se_ratio else ("out_channels", self.out_channels)
            rule = "must be 0.0" if self.se_ratio else "must be >= 2 (1x1 and kxk expand halves)"
            raise SpecError(f"{path}.{name}={value!r} {rule} for op 'fire'")
        if self.op is Op.SHUFFLE and self.out_channels % 2:
            raise SpecError(f"{path}.out_channels={self.out_channels} must be even for op 'shuffle' (channel split)")
        self._validate_edges(path)
        if self.op in (Op.CELL, Op.RESBLOCK):
            # neither block expands or squeezes; a cell's convs take their kernel from its edges
            plain = (("expand_ratio", 1.0), ("mid_channels", None), ("se_ratio", 0.0))
            if self.op is Op.CELL:
                plain = (("kernel", 3), ("stride", 1), *plain)
            for name, value in plain:
                if getattr(self, name) != value:
                    raise SpecError(f"{path}.{name}={getattr(self, name)!r} must be {value} for op {self.op.value!r}")

    def _validate_edges(self, path: str) -> None:
        edges = self.edges
        if isinstance(edges, str) or not isinstance(edges, (tuple, list)):
            raise SpecError(f"{path}.edges={edges!r} must be a list of op names")
        edges = tuple(edges)
        object.__setattr__(self, "edges", edges)
        if self.op is not Op.CELL:
            if edges:
                raise SpecError(f"{path}.edges={list(edges)} is only for op 'cell'")
            return
        if len(edges) != len(CELL_EDGES):
            raise SpecError(f"{path}.edges has {len(edges)} ops, expected {len(CELL_EDGES)} (one per edge)")
        for index, name in enumerate(edges):
            if name not in CELL_OPS:
                raise SpecError(f"{path}.edges[{index}]={name!r} not in {{{', '.join(CELL_OPS)}}}")

    def mid(self, in_channels: int) -> int:
        """Channels of the block's inner (expanded) tensor for a given input width."""
        if self.mid_channels is not None:
            return self.mid_channels
        if self.op in (Op.CELL, Op.RESBLOCK):
            return self.out_channels
        base = self.out_channels // 2 if self.op is Op.SHUFFLE else in_channels
        if self.op is Op.SHUFFLE_V1:  # the bottleneck is a quarter of the unit's output (expand_ratio 1)
            base = self.out_channels // 4
        return max(1, int(round(base * self.expand_ratio)))

    def has_residual(self, in_channels: int) -> bool:
        """Identity shortcut: only when shapes match, and never for MobileNetV1 blocks."""
        return self.op in (Op.MBCONV, Op.GHOST, Op.IRF) and self.stride == 1 and in_channels == self.out_channels

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("op", "activation", "se_style"):
            out[key] = out[key].value
        if self.edges:
            out["edges"] = list(self.edges)
        else:
            del out["edges"]  # specs from before cells existed serialise (and hash) as they did
        if out["groups"] == 1:  # absent unless used: older specs keep their JSON and content hash
            del out["groups"]
        return put_ranks(out, self.ranks)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "block") -> BlockSpec:
        return part_from_dict(cls, data, path)

    def to_string(self) -> str:
        return block_to_string(self)

    @classmethod
    def from_string(cls, text: str) -> BlockSpec:
        return cls(**block_fields_from_string(text))


@dataclass(frozen=True, slots=True)
class StemSpec:
    """Full conv + BN + activation, optionally followed by a 3x3 stride-2 max-pool (ShuffleNet).
    `activation="none"` leaves the stem linear (conv + BN), as NAS-Bench-201's is.

    SqueezeNet's stem (Iandola et al., 2016) is an unpadded conv with a bias and no batch norm:
    `padding` (None: 'same', kernel // 2) and `batch_norm=False`. Both are left out of the JSON at
    their defaults, so specs written before them keep their JSON and content hash. `ranks` as
    `BlockSpec.ranks` (its conv is named "0"), absent from the JSON when empty."""

    out_channels: int = 32
    kernel: int = 3
    stride: int = 2
    activation: Activation = Activation.RELU
    pool: bool = False
    padding: int | None = None
    batch_norm: bool = True
    ranks: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        self.validate("stem")

    def validate(self, path: str) -> None:
        object.__setattr__(self, "activation", enum_value(Activation, self.activation, f"{path}.activation"))
        check_int(self.out_channels, f"{path}.out_channels", minimum=1)
        check_choice(self.kernel, STEM_KERNELS, f"{path}.kernel")
        check_choice(self.stride, STRIDES, f"{path}.stride")
        for name in ("pool", "batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{path}.{name}={getattr(self, name)!r} must be true or false")
        if self.padding is not None:
            check_choice(self.padding, tuple(range(self.kernel // 2 + 1)), f"{path}.padding")
        object.__setattr__(self, "ranks", normalize_ranks(self.ranks, f"{path}.ranks"))

    def to_dict(self) -> dict[str, Any]:
        out = {**{f.name: getattr(self, f.name) for f in fields(self)}, "activation": self.activation.value}
        for name, default in (("padding", None), ("batch_norm", True)):
            if out[name] == default:  # absent unless used: older specs keep their JSON and content hash
                del out[name]
        return put_ranks(out, self.ranks)


@dataclass(frozen=True, slots=True)
class HeadSpec:
    """Optional BN + act on the last block's output (`preact`: the pre-activation networks'
    closing "lastact", NAS-Bench-201's), 1x1 conv + BN + act (optional), global average pool,
    optional hidden linear + act (MobileNetV3's 1280, GhostNet's conv_head), dropout, classifier.
    `preact` is left out of the JSON when false, `ranks` (as `BlockSpec.ranks`: "conv", "hidden",
    "classifier") when empty, so older specs keep their hashes.

    `classifier="conv"` is SqueezeNet's head instead: dropout, 1x1 conv (with bias) to the classes,
    act, global average pool; it takes no head conv, hidden layer or preact. At "linear" (the
    default) it is left out of the JSON."""

    conv_channels: int | None = 1280
    hidden_channels: int | None = None
    activation: Activation = Activation.RELU
    dropout: float = 0.2
    preact: bool = False
    classifier: str = "linear"
    ranks: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        self.validate("head")

    def validate(self, path: str) -> None:
        object.__setattr__(self, "activation", enum_value(Activation, self.activation, f"{path}.activation"))
        if self.conv_channels is not None:
            check_int(self.conv_channels, f"{path}.conv_channels", minimum=1)
        if self.hidden_channels is not None:
            check_int(self.hidden_channels, f"{path}.hidden_channels", minimum=1)
        check_number(self.dropout, f"{path}.dropout", low=0.0, high=0.95)
        object.__setattr__(self, "dropout", float(self.dropout))
        if not isinstance(self.preact, bool):
            raise SpecError(f"{path}.preact={self.preact!r} must be true or false")
        check_choice(self.classifier, CLASSIFIERS, f"{path}.classifier")
        if self.classifier == "conv":
            for name, plain in (("conv_channels", None), ("hidden_channels", None), ("preact", False)):
                if getattr(self, name) != plain:
                    raise SpecError(f"{path}.{name}={getattr(self, name)!r} must be {plain} with classifier 'conv'")
        object.__setattr__(self, "ranks", normalize_ranks(self.ranks, f"{path}.ranks"))

    def to_dict(self) -> dict[str, Any]:
        out = {**{f.name: getattr(self, f.name) for f in fields(self)}, "activation": self.activation.value}
        if not self.preact:
            del out["preact"]
        if self.classifier == "linear":
            del out["classifier"]
        return put_ranks(out, self.ranks)


SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """A whole network. `name` is a label and is not part of the content hash."""

    stem: StemSpec
    blocks: tuple[BlockSpec, ...]
    head: HeadSpec
    resolution: int = 224
    num_classes: int = 1000
    in_channels: int = 3
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        for part, kind in (("stem", StemSpec), ("head", HeadSpec)):
            if not isinstance(getattr(self, part), kind):
                raise SpecError(f"{part} must be a {kind.__name__}, got {type(getattr(self, part)).__name__}")
        self.stem.validate("stem")
        self.head.validate("head")
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise SpecError("blocks must be a non-empty list of blocks")
        for index, block in enumerate(self.blocks):
            if not isinstance(block, BlockSpec):
                raise SpecError(f"blocks[{index}] must be a BlockSpec, got {type(block).__name__}")
            block.validate(f"blocks[{index}]")
        check_int(self.resolution, "resolution", minimum=8)
        check_int(self.num_classes, "num_classes", minimum=2)
        check_int(self.in_channels, "in_channels", minimum=1)
        self._check_block_shapes()

    def _check_block_shapes(self) -> None:
        """Rules that need the input width or size: a stride-1 ShuffleNet unit and a cell keep their
        width; a strided resblock needs an even input size."""
        channels = self.stem.out_channels
        size = stem_output_size(self.stem, self.resolution)
        if size < 1:
            raise SpecError(f"resolution={self.resolution} is too small for the stem's "
                            f"{self.stem.kernel}x{self.stem.kernel} conv at padding {self.stem.padding}")
        for index, block in enumerate(self.blocks):
            check_block_input(block, channels, size, f"blocks[{index}]")
            channels, size = block.out_channels, block_output_size(block, size)
        if size < 1:
            raise SpecError(f"resolution={self.resolution} is too small for {len(self.strides())} strided layers")

    def strides(self) -> list[int]:
        strides = [self.stem.stride] + ([2] if self.stem.pool else [])
        return strides + [block.stride for block in self.blocks]

    @property
    def final_channels(self) -> int:
        return self.head.hidden_channels or self.head.conv_channels or self.blocks[-1].out_channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "stem": self.stem.to_dict(),
            "blocks": [block.to_dict() for block in self.blocks],
            "head": self.head.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        if not isinstance(data, dict):
            raise SpecError(f"an architecture must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"schema_version={version!r} not in {{{SCHEMA_VERSION}}}")
        known = {"schema_version", "name", "resolution", "num_classes", "in_channels", "stem", "blocks", "head"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown field(s) {unknown}; allowed: {sorted(known)}")
        for part in ("stem", "blocks", "head"):
            if part not in data:
                raise SpecError(f"{part} is missing")
        blocks = data["blocks"]
        if not isinstance(blocks, list):
            raise SpecError(f"blocks must be a list, got {type(blocks).__name__}")
        return cls(
            stem=part_from_dict(StemSpec, data["stem"], "stem"),
            blocks=tuple(part_from_dict(BlockSpec, b, f"blocks[{i}]") for i, b in enumerate(blocks)),
            head=part_from_dict(HeadSpec, data["head"], "head"),
            resolution=data.get("resolution", 224),
            num_classes=data.get("num_classes", 1000),
            in_channels=data.get("in_channels", 3),
            name=data.get("name", ""),
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"not valid JSON: {error}") from None
        return cls.from_dict(data)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON without the name: equal networks hash equally."""
        data = self.to_dict()
        del data["name"]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def block_strings(self) -> list[str]:
        return [block.to_string() for block in self.blocks]

    def with_blocks(self, blocks: list[BlockSpec] | tuple[BlockSpec, ...]) -> ArchSpec:
        return replace(self, blocks=tuple(blocks))

    def replace(self, **changes: Any) -> ArchSpec:
        return replace(self, **changes)


def part_from_dict(cls: type, data: Any, path: str) -> Any:
    """Construct a part from JSON, reporting errors under `path` (e.g. `blocks[3].kernel`)."""
    if not isinstance(data, dict):
        raise SpecError(f"{path} must be a JSON object, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise SpecError(f"{path}: unknown field(s) {unknown}; allowed: {names}")
    required = [f.name for f in fields(cls) if f.default is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise SpecError(f"{path}.{missing[0]} is missing")
    default_path = {BlockSpec: "block", StemSpec: "stem", HeadSpec: "head"}[cls]
    try:
        return cls(**data)
    except SpecError as error:
        message = str(error)
        if message.startswith(default_path):
            message = path + message[len(default_path):]
        raise SpecError(message) from None
