"""HW-NAS-Bench's FBNet-space latencies (Li et al., ICLR 2021, as HELP redistributes them): a reader
of the data file and an importer that turns one device's per-architecture latencies into a
`LatencyTable` for the `fbnet` space at 32 px, 100 classes (the CIFAR-100 setting).

The file (JSON): `ops` (the 9 op names, HW-NAS-Bench's order), `archs` (lists of 22 op indices) and
one list of latencies in ms per device, in the order of `archs`. For pixel3, raspi4, eyeriss and
fpga each latency is a sum of per-layer table entries, so the table is recovered exactly by least
squares over the layer signatures (`exact: true` in the metadata, the largest error of any sum in
`max_abs_error_ms`). The whole-model phones (pixel2, samsung_a50, samsung_s7, essential_ph_1) are
not additive: their table is the least-squares per-signature fit (`exact: false`, in-sample error
recorded), a usable source for `predictors.latency.fit`, not a measurement.

What the sums cannot tell apart: adding a constant to all nine ops of a stage's first layer (where
`skip` is a 1x1 conv, never absent) and taking it from the stem or head changes no sum. The total
those entries share is fixed; the importer splits it over the stem, the head and the six 1x1
`skip` entries in proportion to their MACs, and states so in the metadata. Every architecture's
sum is unaffected by that choice. (For fpga that total is 0: HW-NAS-Bench's FPGA figures count
neither stem, head nor any `skip`.)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from predictors.cost import layer_macs
from predictors.latency.lut import LatencyTable, LatencyTableError
from predictors.latency.measure import Measurement
from search_spaces.build import layer_shapes
from search_spaces.errors import InputFileError
from search_spaces.space import SearchSpace
from search_spaces.spaces.fbnet import LAYERS, OPS, FBNetSpace
from search_spaces.spec import ArchSpec, Op

ADDITIVE_DEVICES = ("pixel3", "raspi4", "eyeriss", "fpga")
MEASURED_DEVICES = ("pixel2", "samsung_a50", "samsung_s7", "essential_ph_1")
DEVICES = ADDITIVE_DEVICES + MEASURED_DEVICES
DESCRIPTIONS = {
    "pixel3": "Google Pixel 3 (TF-Lite), HW-NAS-Bench per-op table",
    "raspi4": "Raspberry Pi 4 (TF-Lite), HW-NAS-Bench per-op table",
    "eyeriss": "Eyeriss (simulated), HW-NAS-Bench per-op table",
    "fpga": "FPGA (simulated), HW-NAS-Bench per-op table",
    "pixel2": "Google Pixel 2, whole-model measurements (HELP)",
    "samsung_a50": "Samsung A50, whole-model measurements (HELP)",
    "samsung_s7": "Samsung S7, whole-model measurements (HELP)",
    "essential_ph_1": "Essential PH-1, whole-model measurements (HELP)",
}
RESOLUTION, NUM_CLASSES = 32, 100  # HW-NAS-Bench's CIFAR-100 setting
DATA_RELATIVE = Path("luts") / "hwnasbench_fbnet" / "help_fbnet_latency.json"


def space() -> FBNetSpace:
    return FBNetSpace(resolution=RESOLUTION, num_classes=NUM_CLASSES)


@dataclass(frozen=True)
class HWNASBenchData:
    """The file's architectures (op-index vectors) and per-device latencies (ms)."""

    path: Path
    sha256: str
    vectors: np.ndarray  # (n, 22) op indices
    latencies: dict[str, np.ndarray]

    @cached_property
    def space(self) -> FBNetSpace:
        return space()

    @cached_property
    def archs(self) -> list[ArchSpec]:
        return [self.space.decode(vector) for vector in self.vectors.tolist()]

    def arch_strings(self) -> list[str]:
        return ["-".join(OPS[i] for i in vector) for vector in self.vectors.tolist()]

    def device(self, name: str) -> np.ndarray:
        if name not in self.latencies:
            raise LatencyTableError(f"{self.path}: no device {name!r}; devices: {', '.join(self.latencies)}")
        return self.latencies[name]


def read_hwnasbench(path: str | Path) -> HWNASBenchData:
    """Read and check the file: every problem names the key and the entry."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path} does not exist (expected HW-NAS-Bench's FBNet latencies, "
                             f"help_fbnet_latency.json)")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LatencyTableError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or "archs" not in data or "ops" not in data:
        raise LatencyTableError(f"{path}: expected an object with 'ops', 'archs' and one latency list per device")
    if list(data["ops"]) != list(OPS):
        raise LatencyTableError(f"{path}: ops={data['ops']!r}, expected {list(OPS)}")
    archs = data["archs"]
    if not isinstance(archs, list) or not archs:
        raise LatencyTableError(f"{path}: 'archs' must be a non-empty list of {LAYERS} op indices each")
    for index, arch in enumerate(archs):
        if (not isinstance(arch, list) or len(arch) != LAYERS
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(OPS) for i in arch)):
            raise LatencyTableError(f"{path}: archs[{index}] must be {LAYERS} op indices in 0..{len(OPS) - 1}")
    latencies = {}
    for device in DEVICES:
        if device not in data:
            continue
        values = data[device]
        if not isinstance(values, list) or len(values) != len(archs):
            raise LatencyTableError(f"{path}: '{device}' must list {len(archs)} latencies, one per arch")
        for index, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise LatencyTableError(f"{path}: {device}[{index}]={value!r} must be a positive number of ms")
        latencies[device] = np.asarray(values, dtype=float)
    if not latencies:
        raise LatencyTableError(f"{path}: no device latencies (expected some of {', '.join(DEVICES)})")
    return HWNASBenchData(path, hashlib.sha256(raw).hexdigest(), np.asarray(archs, dtype=np.int64), latencies)


def signature_counts(search_space: SearchSpace, archs: list[ArchSpec]) -> tuple[list[str], np.ndarray]:
    """(the space's candidate signatures, a matrix of how often each occurs in each arch)."""
    keys = [layer.signature for layer in search_space.candidate_ops()]
    column = {key: j for j, key in enumerate(keys)}
    counts = np.zeros((len(archs), len(keys)))
    for i, arch in enumerate(archs):
        for layer in layer_shapes(arch):
            counts[i, column[layer.signature]] += 1
    return keys, counts


def fit_additive_entries(search_space: SearchSpace, archs: list[ArchSpec], latencies: np.ndarray) -> dict[str, float]:
    """Per-signature entries whose sums fit `latencies` by least squares, with the split of the
    unidentifiable share described in the module docstring (MAC-proportional)."""
    keys, counts = signature_counts(search_space, archs)
    layers = {layer.signature: layer for layer in search_space.candidate_ops()}
    always = [keys[j] for j in range(len(keys)) if np.all(counts[:, j] == 1)]  # stem and head
    varying = [j for j in range(len(keys)) if keys[j] not in always]
    design = np.hstack([counts[:, varying], np.ones((len(archs), 1))])
    solution, *_ = np.linalg.lstsq(design, latencies, rcond=None)
    weights = {keys[j]: float(w) for j, w in zip(varying, solution[:-1])}
    shared = float(solution[-1])  # what the always-present layers and the groups' offsets share
    groups = _exactly_one_groups(keys, counts, varying, layers)
    anchors = {}
    for group in groups:  # each group relative to its 1x1 `skip` (op pw)
        anchor = next((key for key in group if getattr(layers[key].part, "op", None) is Op.PW),
                      min(group, key=lambda key: layer_macs(layers[key])))
        offset = weights[anchor]
        shared += offset
        for key in group:
            weights[key] -= offset
        anchors[anchor] = group
    macs = {key: max(1, layer_macs(layers[key])) for key in [*always, *anchors]}
    for key, key_macs in macs.items():
        share = shared * key_macs / sum(macs.values())
        for member in anchors.get(key, [key]):
            weights[member] = weights.get(member, 0.0) + share
    return weights


def _exactly_one_groups(keys: list[str], counts: np.ndarray, varying: list[int],
                        layers: dict[str, Any]) -> list[list[str]]:
    """Signatures of one layer position (same input and output shape) of which every architecture
    holds exactly one: a stage's first layer, whose `skip` is a 1x1 conv rather than absent."""
    by_shape: dict[tuple[int, int, int, int], list[int]] = {}
    for j in varying:
        layer = layers[keys[j]]
        by_shape.setdefault((layer.in_channels, layer.in_size, layer.out_channels, layer.out_size), []).append(j)
    return [[keys[j] for j in columns] for columns in by_shape.values()
            if np.all(counts[:, columns].sum(axis=1) == 1)]


def import_hwnasbench(path: str | Path, device: str | None = None) -> LatencyTable:
    """One device of the file as a `LatencyTable` of the `fbnet` space at 32 px / 100 classes."""
    if device is None:
        raise LatencyTableError(f"--device is required for the hwnasbench format: one of {', '.join(DEVICES)}")
    if device not in DEVICES:
        raise LatencyTableError(f"device {device!r} not in the hwnasbench data; devices: {', '.join(DEVICES)}")
    data = read_hwnasbench(path)
    latencies = data.device(device)
    fbnet = data.space
    weights = fit_additive_entries(fbnet, data.archs, latencies)
    rounding = 1e-9 * float(latencies.max())  # least squares leaves -1e-15 where the true entry is 0
    negative = sorted(key for key, value in weights.items() if value < -rounding)
    if negative and device in ADDITIVE_DEVICES:
        raise LatencyTableError(f"{path}: {device}: entries {negative[:3]} came out negative; the data is not a "
                                "per-op table sum")
    entries = {key: Measurement(max(0.0, value), max(0.0, value), max(0.0, value), 1) for key, value in weights.items()}
    table = LatencyTable({}, entries, space=fbnet.name, resolution=RESOLUTION, num_classes=NUM_CLASSES)
    predicted = np.array([table.predict(arch) for arch in data.archs])
    error = np.abs(predicted - latencies)
    exact = bool(error.max() <= 1e-9 * max(1.0, float(latencies.max())))
    table.metadata.update({
        "backend": "hwnasbench",
        "device": DESCRIPTIONS[device],
        "hwnasbench_device": device,
        "threads": 1,
        "batch_size": 1,
        "source": "imported:hwnasbench",
        "source_file": Path(path).name,
        "source_sha256": data.sha256,
        "source_archs": len(latencies),
        "exact": exact,
        "max_abs_error_ms": float(error.max()),
        "mean_abs_percent_error": float(np.mean(error / latencies) * 100),
        "negative_entries_clipped": len(negative),
        "zero_entries": sum(1 for value in weights.values() if abs(value) <= rounding),
        "identifiability": "sums fix a stage-first layer's ops only relative to each other; the shared total "
                           "is split over stem, head and the 1x1 skip entries in proportion to their MACs",
        "percentiles": "none published: p10 = p90 = the entry",
    })
    return table
