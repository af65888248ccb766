"""The reduced ProxylessNAS space both proxyless test files use (8 px, two short stages) and a
measurer whose per-key latencies are known, so tables build instantly and tie-free."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from pathlib import Path

from predictors.latency import Measurement, build_table
from search_spaces.build import LayerShape
from search_spaces.space import Decision, SearchSpace
from search_spaces.spaces import SPACES
from search_spaces.spaces.proxyless import KERNELS, PAIR_LABELS, PAIRS, ProxylessSpace
from search_spaces.spec import Activation, ArchSpec, HeadSpec, StemSpec

RESOLUTION, CLASSES = 8, 4


class SmallProxylessSpace(ProxylessSpace):
    """The proxyless space cut to two stages of at most two layers (16 ch stride 2, 24 ch):
    first.kernel x 6 x 7 x 6 x 7 = 5292 vectors, few enough to brute-force the fastest."""

    name = "proxyless-small"

    def __init__(self, resolution: int = RESOLUTION, num_classes: int = CLASSES) -> None:
        SearchSpace.__init__(self, resolution, num_classes)
        self.width_mult = 1.0
        self.stem = StemSpec(8, 3, 1, Activation.RELU6)
        self.first_channels = 8
        self.head = HeadSpec(conv_channels=32, activation=Activation.RELU6, dropout=0.1)
        self.widths, self.strides, self.depths = [16, 24], [2, 1], [2, 2]
        self.decisions = [Decision("first.kernel", KERNELS)]
        for s, depth in enumerate(self.depths, 1):
            self.decisions.append(Decision(f"stage{s}.layer1", PAIRS, PAIR_LABELS))
            self.decisions += [Decision(f"stage{s}.layer{j}", (None, *PAIRS), ("skip", *PAIR_LABELS))
                               for j in range(2, depth + 1)]


if SmallProxylessSpace.name not in SPACES:
    SPACES.add(SmallProxylessSpace.name, SmallProxylessSpace)


def fake_latency_ms(signature: str) -> float:
    """Known, deterministic and (almost surely) tie-free latency per table key: 0.5-2.0 ms."""
    return 0.5 + 1.5 * int(hashlib.sha256(signature.encode()).hexdigest()[:8], 16) / 2**32


class FakeMeasurer:
    def metadata(self) -> dict[str, Any]:
        return {"backend": "fake", "threads": 1, "device": "test"}

    def measure_layers(self, layers: Sequence[LayerShape], progress: Any = None) -> list[Measurement]:
        return [Measurement(*(fake_latency_ms(layer.signature),) * 3, runs=1) for layer in layers]

    def measure_archs(self, archs: Sequence[ArchSpec], progress: Any = None) -> list[Measurement]:
        raise NotImplementedError


def small_table(directory: Path) -> Path:
    """`SmallProxylessSpace`'s table, measured by `FakeMeasurer`, as `directory/small.json`."""
    path = Path(directory) / "small.json"
    build_table(SmallProxylessSpace(), FakeMeasurer(), path)
    return path
