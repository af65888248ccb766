"""The zoo's seed architectures from before NAS: SqueezeNet 1.0 / 1.1 and MobileNet V1 as
`ArchSpec` parts, with the figures they are checked against (`zoo.py` lists them with the rest).

- **SqueezeNet 1.0 / 1.1** (Iandola et al., 2016, Table 1 and Sec. 3.3; 1.1 from the authors'
  forresti/SqueezeNet repository; layouts and exact counts from torchvision's `squeezenet1_0|1_1`,
  1,248,424 / 1,235,496 params): an unpadded stem conv with bias and no BN (7x7/96 or 3x3/64,
  stride 2), fire modules (squeeze s1x1, expand e1x1 = e3x3), each max-pool written as the stride
  of the fire module that follows it (3x3/s2 in ceil mode), dropout 0.5 and a 1x1 conv classifier
  before the global pool (`HeadSpec.classifier="conv"`). MACs are checked against torchvision's
  weights metadata (`_ops` 0.819 / 0.349 G, docs: 0.82 / 0.35 GFLOPS): the paper gives no total.
- **MobileNet V1 1.0** (Howard et al., 2017, Table 1; 569M mult-adds, 4.2M params in Tables 6-7):
  stem 3x3/32 s2, 13 depthwise-separable blocks, global pool, linear classifier. Table 1's last
  `Conv dw / s2` runs on a 7x7 map and keeps it (reference implementations use stride 1 there).
  Width multipliers 0.75/0.5/0.25 are `compress.scale.scale_spec(spec, width)`, whose rounding to
  multiples of 8 leaves the paper's alpha x channels exact (Table 6); resolutions 192/160/128 are
  `zoo.get(name, resolution)` (Table 7).
"""

from __future__ import annotations

from collections.abc import Callable

from search_spaces.spec import Activation, BlockSpec, HeadSpec, Op, StemSpec

__all__ = ["SEED_FIGURES", "SEED_MODELS", "SEED_TORCHVISION_NAMES"]

Parts = tuple[StemSpec, list[BlockSpec], HeadSpec]
RELU = Activation.RELU

# name -> (params, MACs at 224, source), as `zoo.PublishedFigures` holds them
SEED_FIGURES: dict[str, tuple[int, int, str]] = {
    "squeezenet1_0": (1_248_424, 819_000_000, "torchvision SqueezeNet1_0_Weights metadata (num_params; _ops 0.819 G)"),
    "squeezenet1_1": (1_235_496, 349_000_000, "torchvision SqueezeNet1_1_Weights metadata (num_params; _ops 0.349 G)"),
    "mobilenet_v1": (4_200_000, 569_000_000, "Howard et al., 2017, Tables 6-7 (1.0 MobileNet-224)"),
}
SEED_TORCHVISION_NAMES = {"squeezenet1_0": "squeezenet1_0", "squeezenet1_1": "squeezenet1_1"}


def _squeezenet(stem: StemSpec, rows: list[tuple[int, int, int]]) -> Parts:
    """Fire modules from rows of (squeeze s1x1, expand e1x1 = e3x3, stride: 2 = max-pool before)."""
    blocks = [BlockSpec(Op.FIRE, out_channels=2 * expand, stride=stride, mid_channels=squeeze, activation=RELU)
              for squeeze, expand, stride in rows]
    return stem, blocks, HeadSpec(None, activation=RELU, dropout=0.5, classifier="conv")


def _squeezenet1_0() -> Parts:
    # fire2-fire9 of the paper's Table 1; max-pools after conv1, fire4 and fire8
    rows = [(16, 64, 2), (16, 64, 1), (32, 128, 1), (32, 128, 2), (48, 192, 1), (48, 192, 1), (64, 256, 1),
            (64, 256, 2)]
    return _squeezenet(StemSpec(96, kernel=7, stride=2, padding=0, batch_norm=False), rows)


def _squeezenet1_1() -> Parts:
    # SqueezeNet 1.1: a 3x3/64 stem and the max-pools moved earlier (after conv1, fire3, fire5)
    rows = [(16, 64, 2), (16, 64, 1), (32, 128, 2), (32, 128, 1), (48, 192, 2), (48, 192, 1), (64, 256, 1),
            (64, 256, 1)]
    return _squeezenet(StemSpec(64, kernel=3, stride=2, padding=0, batch_norm=False), rows)


def _mobilenet_v1() -> Parts:
    # (channels, stride) of the 13 depthwise-separable blocks, the paper's Table 1
    rows = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    blocks = [BlockSpec(Op.DSCONV, out_channels=channels, stride=stride, activation=RELU) for channels, stride in rows]
    return StemSpec(32, activation=RELU), blocks, HeadSpec(None, activation=RELU, dropout=0.001)


SEED_MODELS: dict[str, Callable[[], Parts]] = {
    "squeezenet1_0": _squeezenet1_0,
    "squeezenet1_1": _squeezenet1_1,
    "mobilenet_v1": _mobilenet_v1,
}
