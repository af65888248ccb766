"""Importers for latency tables that other projects publish, so users can search for a phone they
do not own.

`proxyless`: the YAML lookup tables of ProxylessNAS / Once-for-All (Cai et al., ICLR 2019 and
2020) for their mobile space, e.g. `mobile_trim.yaml` measured on a Google Pixel 1 with TF-Lite.
Keys look like::

    Conv-input:224x224x3-output:112x112x32                                    stem (3x3 conv s2)
    expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0
    Conv_1-input:7x7x320-output:7x7x1280                                      1x1 head conv
    Logits-input:7x7x1280-output:1000                                         pool + classifier

each with `mean` (ms), `var` (ms^2) and `count`. They map onto the `proxyless` space's layer
signatures: MBConv with ReLU6 and no SE; our head is one layer (1x1 conv + pool + classifier),
so its entry is `Conv_1 + Logits` (means add; variances add, assuming independent timings).
The files give no percentiles, so p10/p90 are mean -/+ 1.2816 standard deviations (a normal
approximation, stated in the table's metadata).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from predictors.latency.lut import LatencyTable, LatencyTableError
from predictors.latency.measure import Measurement
from search_spaces.errors import InputFileError, UnknownNameError
from search_spaces.build import LayerShape, conv_output_size
from search_spaces.spec import Activation, BlockSpec, HeadSpec, Op, StemSpec

_SHAPE = r"(\d+)x(\d+)x(\d+)"
_BLOCK_KEY = re.compile(
    rf"^expanded_conv-input:{_SHAPE}-output:{_SHAPE}-expand:(\d+)-kernel:(\d+)-stride:(\d+)-idskip:([01])$"
)
_STEM_KEY = re.compile(rf"^Conv-input:{_SHAPE}-output:{_SHAPE}$")
_HEAD_CONV_KEY = re.compile(rf"^Conv_1-input:{_SHAPE}-output:{_SHAPE}$")
_LOGITS_KEY = re.compile(rf"^Logits-input:{_SHAPE}-output:(\d+)$")
Z_90 = 1.2815515655446004  # standard normal quantile at 0.9

PROXYLESS_ACTIVATION = Activation.RELU6


def _measurement(stats: Any, key: str) -> tuple[float, float, int]:
    if not isinstance(stats, dict) or "mean" not in stats:
        raise LatencyTableError(f"{key}: expected a mapping with 'mean' (ms), 'var' and 'count'")
    try:
        mean, var, count = float(stats["mean"]), float(stats.get("var", 0.0)), int(stats.get("count", 1))
    except (TypeError, ValueError) as error:
        raise LatencyTableError(f"{key}: mean/var/count must be numbers ({error})") from None
    if not (math.isfinite(mean) and mean >= 0 and math.isfinite(var) and var >= 0 and count >= 1):
        raise LatencyTableError(f"{key}: mean={mean}, var={var}, count={count} out of range")
    return mean, var, count


def _normal_measurement(mean: float, var: float, count: int) -> Measurement:
    half_width = Z_90 * math.sqrt(var)
    return Measurement(mean, max(0.0, mean - half_width), mean + half_width, count)


def _square(height: str, width: str, key: str) -> int:
    if height != width:
        raise LatencyTableError(f"{key}: only square inputs are supported, got {height}x{width}")
    return int(height)


Stats = tuple[float, float, int]  # mean (ms), var (ms^2), count


def _read_mapping(path: Path) -> tuple[bytes, dict[Any, Any]]:
    """The file's bytes (hashed into the table's metadata) and its YAML mapping."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{path} does not exist (expected a latency table to import)") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise LatencyTableError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict) or not data:
        raise LatencyTableError(f"{path}: expected a mapping of layer keys to statistics")
    return raw, data


def _block_layer(match: re.Match[str], key: str) -> LayerShape:
    h, w, c, oh, ow, oc, expand, kernel, stride, idskip = match.groups()
    size = _square(h, w, key)
    block = BlockSpec(Op.MBCONV, int(oc), int(stride), int(kernel), int(expand), activation=PROXYLESS_ACTIVATION)
    if conv_output_size(size, block.stride) != _square(oh, ow, key):
        raise LatencyTableError(f"{key}: output size does not follow from stride {stride}")
    if block.has_residual(int(c)) != (idskip == "1"):
        raise LatencyTableError(f"{key}: idskip:{idskip} contradicts the shapes (residual only when they match)")
    return LayerShape("block", "block", int(c), size, block.out_channels, int(oh), block)


def _stem_layer(match: re.Match[str], key: str) -> LayerShape:
    h, w, c, oh, ow, oc = match.groups()
    resolution = _square(h, w, key)
    stem = StemSpec(int(oc), 3, resolution // _square(oh, ow, key), PROXYLESS_ACTIVATION)
    return LayerShape("stem", "stem", int(c), resolution, stem.out_channels, int(oh), stem)


def _head_entries(path: Path, head_convs: dict[tuple[int, int], tuple[int, Stats]],
                  logits: dict[int, tuple[int, Stats]]) -> tuple[dict[str, Measurement], int | None]:
    """Our head is one layer: each `Conv_1` entry joined with the `Logits` entry it feeds."""
    entries: dict[str, Measurement] = {}
    num_classes = None
    for (channels, size), (conv_channels, conv_stats) in head_convs.items():
        if conv_channels not in logits:
            raise LatencyTableError(f"{path}: Conv_1 to {conv_channels} channels has no Logits-input:...x{conv_channels} entry")
        num_classes, logit_stats = logits[conv_channels]
        head = HeadSpec(conv_channels=conv_channels, activation=PROXYLESS_ACTIVATION)
        layer = LayerShape("head", "head", channels, size, num_classes, 1, head)
        entries[layer.signature] = _normal_measurement(
            conv_stats[0] + logit_stats[0], conv_stats[1] + logit_stats[1], min(conv_stats[2], logit_stats[2])
        )
    return entries, num_classes


def import_proxyless_yaml(path: str | Path, device: str = "Google Pixel 1 (TF-Lite, per ProxylessNAS)") -> LatencyTable:
    """Read a ProxylessNAS/OFA mobile latency YAML into a `LatencyTable` for the `proxyless` space.
    Every key must be understood; an unknown key is an error, not a silent skip."""
    path = Path(path)
    raw, data = _read_mapping(path)
    entries: dict[str, Measurement] = {}
    head_convs: dict[tuple[int, int], tuple[int, Stats]] = {}  # (C, size) -> (out C, stats)
    logits: dict[int, tuple[int, Stats]] = {}  # in C -> (classes, stats)
    resolution = None
    for key, stats in data.items():
        key = str(key)
        values = _measurement(stats, key)
        if match := _BLOCK_KEY.match(key):
            entries[_block_layer(match, key).signature] = _normal_measurement(*values)
        elif match := _STEM_KEY.match(key):
            layer = _stem_layer(match, key)
            resolution = layer.in_size
            entries[layer.signature] = _normal_measurement(*values)
        elif match := _HEAD_CONV_KEY.match(key):
            h, w, c, _, _, oc = match.groups()
            head_convs[(int(c), _square(h, w, key))] = (int(oc), values)
        elif match := _LOGITS_KEY.match(key):
            _, _, c, classes = match.groups()
            logits[int(c)] = (int(classes), values)
        else:
            raise LatencyTableError(
                f"{path}: key {key!r} is not a ProxylessNAS mobile LUT key "
                "(Conv-, expanded_conv-, Conv_1- or Logits-input:HxWxC-output:...)"
            )
    head_entries, num_classes = _head_entries(path, head_convs, logits)
    metadata = {
        "backend": "tflite",
        "device": device,
        "threads": 1,
        "batch_size": 1,
        "source": "imported:proxyless",
        "source_file": path.name,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "source_keys": len(data),
        "percentiles": "normal approximation: mean -/+ 1.2816 * sqrt(var)",
    }
    return LatencyTable(metadata, {**entries, **head_entries}, space="proxyless", resolution=resolution,
                        num_classes=num_classes)


def _import_hwnasbench(path: str | Path, device: str | None = None) -> LatencyTable:
    from predictors.latency.hwnasbench import import_hwnasbench

    return import_hwnasbench(path, device)


IMPORTERS = {"proxyless": import_proxyless_yaml, "hwnasbench": _import_hwnasbench}


def import_table(format: str, path: str | Path, **options: Any) -> LatencyTable:
    if format not in IMPORTERS:
        raise UnknownNameError(f"unknown latency table format {format!r}; known: {', '.join(IMPORTERS)}")
    return IMPORTERS[format](path, **options)
