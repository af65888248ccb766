"""Published architectures written as `ArchSpec`: the ground truth that the spec, the builder and
the cost counters are checked against.

Each model is a small table in the style of torchvision's model files, expanded into blocks by a
helper. Nothing is built at import time: `get(name)` runs the table's function on demand.

Sources and conventions, where a paper and a reference implementation disagree:

- **MobileNetV2** (Sandler et al., CVPR 2018, Table 2): torchvision's `mobilenet_v2` layout,
  3,504,872 parameters. The paper's Table 4 says 3.4M, 3.1% below that; the authors' own checkpoint
  table says 3.47M, which is what `PUBLISHED` records (a rounding, not a different network).
- **MobileNetV3** (Howard et al., ICCV 2019, Tables 1-2): torchvision's `InvertedResidualConfig`
  tables, which spell out each block's expanded width (so `BlockSpec.mid_channels` is used), and
  its SE: squeeze = make_divisible(expanded / 4, 8), ReLU inside, hard-sigmoid gate. We follow
  torchvision because it ships the model whose exact count we check (5,483,032 / 2,542,856
  parameters; the paper rounds to 5.4M / 2.5M).
- **MnasNet-B1** is torchvision's `mnasnet1_0` ("This implements the B1 variant"): no SE, ReLU,
  stem conv, then a depthwise-separable 32->16 (`MBConv` with expand 1: dw 3x3 BN ReLU, pw 1x1 BN,
  linear), then six stacks of inverted residuals. We take torchvision's figures as the published
  ones (its weights' metadata: 4,383,312 parameters, `_ops` 0.314 G, which are MACs): we found
  no B1 figure to cite in the CVPR paper's result tables, which report the A-series.
- **MnasNet-A1** (Tan et al., CVPR 2019, Fig. 7 and Table 1; block strings of the TF reference
  `tensorflow/tpu models/official/mnasnet/mnasnet_models.py::mnasnet_a1`): SE squeeze =
  int(block input * 0.25) with sigmoid gate (the TF reference's rule), ReLU throughout.
  3,887,038 parameters, the count osmr/imgclsmob's independent port asserts.
- **EfficientNet-B0** (Tan & Le, ICML 2019, Table 1): torchvision's `efficientnet_b0`, SE on every
  block with squeeze = block input // 4, SiLU (swish) throughout.
- **ShuffleNetV2 1.0x** (Ma et al., ECCV 2018, Table 5): torchvision's `shufflenet_v2_x1_0`.
- **GhostNet 1.0x** (Han et al., CVPR 2020, Table 1; reference huawei-noah/ghostnet, which timm's
  `ghostnet_100` follows, 5.18M): GhostNet's `conv_head` is a 1x1 conv with bias applied *after* global pooling,
  which is a linear layer: `HeadSpec.hidden_channels=1280`. SE squeeze = make_divisible(mid / 4, 4)
  with biases, hard-sigmoid gate. 5,182,508 parameters, equal to a layer-by-layer count of the
  reference code (osmr/imgclsmob's port, which rounds differently, has 5,180,840).
- **ProxylessNAS-Mobile** (Cai et al., ICLR 2019; mit-han-lab/proxylessnas `proxyless_mobile`):
  the block sequence matches the TF-Lite profile `proxyless_mobile_10_latency.txt`
  (`up_E-ks_K-st_S` per block); the second stage is 32 wide with two of its four layers skipped.
  ReLU6 throughout, no SE. 4,080,512 parameters, the count osmr/imgclsmob's port asserts. Dropout
  is left at 0 (it changes neither parameters nor MACs).

- **FBNet-A/B/C** (Wu et al., CVPR 2019, Fig. 4 and Table 3: 249M/295M/375M FLOPs, 4.3M/4.5M/5.5M
  params): the macro-architecture of Table 1 (stem 16 s2; stages 16, 24, 32, 64, 112, 184, 352
  with 1, 4, 4, 4, 4, 4, 1 layers and strides 1, 2, 2, 2, 1, 2, 1; 1x1 head conv) with each
  layer's op from facebookresearch/mobile-vision's `fbnet_a|b|c` model definitions. Blocks are
  `irf` (the 1x1 expand is present even at e1; `_g2`: grouped 1x1s + shuffle); a `skip` that
  keeps the shape is absent. FBNet-B's stage-4 second layer is k5_e1 (as a HELP/HW-NAS-Bench
  port lists it, 296.6M MACs, +0.5%), not mobile-vision's k5_e6 (306.2M, +3.8%); our FBNet-B has
  4.81M parameters, 6.9% above the paper's 4.5M, a gap no layer choice near the paper's FLOPs
  closes (the head 1984 -> 1504 would give 4.16M at 288M MACs). Heads: 1504 (A), 1984 (B, C).
- **ShuffleNet V1 1.0x g=3** (Zhang et al., CVPR 2018, Table 1: 137 MFLOPs for g=3; megvii's
  ShuffleNet-Series reference, 1.9M params): stem 3x3 24 s2 + max-pool, stages 240/480/960 with
  4/8/4 units, bottleneck out / 4, the first unit's first 1x1 not grouped, no head conv.

- **SqueezeNet 1.0 / 1.1, MobileNet V1**: `zoo_seeds.py`, with their sources.

MACs everywhere are multiply-adds of convolutions and linear layers only (`predictors.cost`).
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.errors import UnknownNameError
from search_spaces.spec import Activation, ArchSpec, BlockSpec, HeadSpec, Op, SEStyle, StemSpec
from search_spaces.zoo_seeds import SEED_FIGURES, SEED_MODELS, SEED_TORCHVISION_NAMES

RELU, RELU6, HSWISH, SWISH = Activation.RELU, Activation.RELU6, Activation.HSWISH, Activation.SWISH

Parts = tuple[StemSpec, list[BlockSpec], HeadSpec]


@dataclass(frozen=True, slots=True)
class PublishedFigures:
    """What the paper (or the reference implementation named in `source`) reports at 224x224."""

    params: int
    macs: int
    source: str


PUBLISHED: dict[str, PublishedFigures] = {
    # Table 4 rounds to 3.4M, 3.1% below torchvision's exact count; the authors' checkpoint table
    # (tensorflow/models slim mobilenet README, quoted in the Keras docs) gives 3.47M at 300M MACs
    "mobilenet_v2": PublishedFigures(
        3_470_000, 300_000_000, "Sandler et al., CVPR 2018, Table 4 (3.4M); 3.47M in the authors' checkpoint table"
    ),
    "mobilenet_v3_large": PublishedFigures(5_400_000, 219_000_000, "Howard et al., ICCV 2019, Table 3"),
    "mobilenet_v3_small": PublishedFigures(2_500_000, 56_000_000, "Howard et al., ICCV 2019, Table 3"),
    "mnasnet_a1": PublishedFigures(3_900_000, 312_000_000, "Tan et al., CVPR 2019, Table 1"),
    "mnasnet_b1": PublishedFigures(
        4_383_312, 314_000_000, "torchvision MNASNet1_0_Weights metadata (no B1 figure found in the CVPR paper)"
    ),
    "efficientnet_b0": PublishedFigures(5_300_000, 390_000_000, "Tan & Le, ICML 2019, Table 2"),
    "shufflenet_v2_x1_0": PublishedFigures(2_300_000, 146_000_000, "Ma et al., ECCV 2018, Table 5"),
    "ghostnet_1_0": PublishedFigures(5_200_000, 141_000_000, "Han et al., CVPR 2020, Table 7"),
    "proxylessnas_mobile": PublishedFigures(
        4_100_000, 320_000_000, "Cai et al., ICLR 2019; ~320M MACs and 4.1M params as commonly quoted, not one table"
    ),
    "fbnet_a": PublishedFigures(4_300_000, 249_000_000, "Wu et al., CVPR 2019, Table 3"),
    "fbnet_b": PublishedFigures(4_500_000, 295_000_000, "Wu et al., CVPR 2019, Table 3"),
    "fbnet_c": PublishedFigures(5_500_000, 375_000_000, "Wu et al., CVPR 2019, Table 3"),
    "shufflenet_v1_g3": PublishedFigures(
        1_900_000, 137_000_000, "Zhang et al., CVPR 2018, Table 1 (137 MFLOPs, g=3); 1.9M params in megvii's table"
    ),
    **{name: PublishedFigures(*figures) for name, figures in SEED_FIGURES.items()},
}

# Zoo name -> torchvision builder, where torchvision ships the same network.
TORCHVISION_NAMES: dict[str, str] = {
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "mnasnet_b1": "mnasnet1_0",
    "efficientnet_b0": "efficientnet_b0",
    "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
    **SEED_TORCHVISION_NAMES,
}


# ---- table helpers ---------------------------------------------------------------------------


def _stages(
    rows: list[tuple[float, int, int, int, int, float]],
    activation: Activation,
    se_style: SEStyle = SEStyle.EFFICIENTNET,
) -> list[BlockSpec]:
    """MBConv stages from rows of (expand, channels, repeats, stride, kernel, se_ratio):
    the stage's first block takes the stride, the rest keep the resolution."""
    blocks = []
    for expand, channels, repeats, stride, kernel, se_ratio in rows:
        for index in range(repeats):
            blocks.append(
                BlockSpec(
                    Op.MBCONV,
                    out_channels=channels,
                    stride=stride if index == 0 else 1,
                    kernel=kernel,
                    expand_ratio=expand,
                    se_ratio=se_ratio,
                    se_style=se_style,
                    activation=activation,
                )
            )
    return blocks


def _explicit(
    op: Op, rows: list[tuple[int, int, int, float, Activation, int]], se_style: SEStyle
) -> list[BlockSpec]:
    """One block per row of (kernel, mid_channels, out_channels, se_ratio, activation, stride),
    for papers that list every block's expanded width (MobileNetV3, GhostNet)."""
    return [
        BlockSpec(
            op,
            out_channels=out,
            stride=stride,
            kernel=kernel,
            mid_channels=mid,
            se_ratio=se_ratio,
            se_style=se_style,
            activation=activation,
        )
        for kernel, mid, out, se_ratio, activation, stride in rows
    ]


# ---- the models ------------------------------------------------------------------------------


def _mobilenet_v2() -> Parts:
    # (expand t, channels c, repeats n, stride s, kernel, se): the paper's Table 2
    rows = [
        (1, 16, 1, 1, 3, 0.0),
        (6, 24, 2, 2, 3, 0.0),
        (6, 32, 3, 2, 3, 0.0),
        (6, 64, 4, 2, 3, 0.0),
        (6, 96, 3, 1, 3, 0.0),
        (6, 160, 3, 2, 3, 0.0),
        (6, 320, 1, 1, 3, 0.0),
    ]
    return StemSpec(32, activation=RELU6), _stages(rows, RELU6), HeadSpec(1280, activation=RELU6, dropout=0.2)


def _mobilenet_v3_large() -> Parts:
    # (kernel, expanded, out, se, activation, stride): torchvision's table (paper Table 1)
    rows = [
        (3, 16, 16, 0.0, RELU, 1),
        (3, 64, 24, 0.0, RELU, 2),
        (3, 72, 24, 0.0, RELU, 1),
        (5, 72, 40, 0.25, RELU, 2),
        (5, 120, 40, 0.25, RELU, 1),
        (5, 120, 40, 0.25, RELU, 1),
        (3, 240, 80, 0.0, HSWISH, 2),
        (3, 200, 80, 0.0, HSWISH, 1),
        (3, 184, 80, 0.0, HSWISH, 1),
        (3, 184, 80, 0.0, HSWISH, 1),
        (3, 480, 112, 0.25, HSWISH, 1),
        (3, 672, 112, 0.25, HSWISH, 1),
        (5, 672, 160, 0.25, HSWISH, 2),
        (5, 960, 160, 0.25, HSWISH, 1),
        (5, 960, 160, 0.25, HSWISH, 1),
    ]
    blocks = _explicit(Op.MBCONV, rows, SEStyle.MOBILENETV3)
    return StemSpec(16, activation=HSWISH), blocks, HeadSpec(960, 1280, activation=HSWISH, dropout=0.2)


def _mobilenet_v3_small() -> Parts:
    # (kernel, expanded, out, se, activation, stride): torchvision's table (paper Table 2)
    rows = [
        (3, 16, 16, 0.25, RELU, 2),
        (3, 72, 24, 0.0, RELU, 2),
        (3, 88, 24, 0.0, RELU, 1),
        (5, 96, 40, 0.25, HSWISH, 2),
        (5, 240, 40, 0.25, HSWISH, 1),
        (5, 240, 40, 0.25, HSWISH, 1),
        (5, 120, 48, 0.25, HSWISH, 1),
        (5, 144, 48, 0.25, HSWISH, 1),
        (5, 288, 96, 0.25, HSWISH, 2),
        (5, 576, 96, 0.25, HSWISH, 1),
        (5, 576, 96, 0.25, HSWISH, 1),
    ]
    blocks = _explicit(Op.MBCONV, rows, SEStyle.MOBILENETV3)
    return StemSpec(16, activation=HSWISH), blocks, HeadSpec(576, 1024, activation=HSWISH, dropout=0.2)


def _mnasnet_b1() -> Parts:
    # (expand, channels, repeats, stride, kernel, se): torchvision's _stack calls; the first row is
    # the depthwise-separable 32->16 that torchvision writes out layer by layer
    rows = [
        (1, 16, 1, 1, 3, 0.0),
        (3, 24, 3, 2, 3, 0.0),
        (3, 40, 3, 2, 5, 0.0),
        (6, 80, 3, 2, 5, 0.0),
        (6, 96, 2, 1, 3, 0.0),
        (6, 192, 4, 2, 5, 0.0),
        (6, 320, 1, 1, 3, 0.0),
    ]
    return StemSpec(32, activation=RELU), _stages(rows, RELU), HeadSpec(1280, activation=RELU, dropout=0.2)


def _mnasnet_a1() -> Parts:
    # (expand, channels, repeats, stride, kernel, se): paper Fig. 7 / TF reference block strings
    rows = [
        (1, 16, 1, 1, 3, 0.0),  # SepConv k3
        (6, 24, 2, 2, 3, 0.0),
        (3, 40, 3, 2, 5, 0.25),
        (6, 80, 4, 2, 3, 0.0),
        (6, 112, 2, 1, 3, 0.25),
        (6, 160, 3, 2, 5, 0.25),
        (6, 320, 1, 1, 3, 0.0),
    ]
    return StemSpec(32, activation=RELU), _stages(rows, RELU), HeadSpec(1280, activation=RELU, dropout=0.2)


def _efficientnet_b0() -> Parts:
    # (expand, channels, repeats, stride, kernel, se): paper Table 1, SE on every block
    rows = [
        (1, 16, 1, 1, 3, 0.25),
        (6, 24, 2, 2, 3, 0.25),
        (6, 40, 2, 2, 5, 0.25),
        (6, 80, 3, 2, 3, 0.25),
        (6, 112, 3, 1, 5, 0.25),
        (6, 192, 4, 2, 5, 0.25),
        (6, 320, 1, 1, 3, 0.25),
    ]
    return StemSpec(32, activation=SWISH), _stages(rows, SWISH), HeadSpec(1280, activation=SWISH, dropout=0.2)


def _shufflenet_v2_x1_0() -> Parts:
    # (channels, units): each stage opens with a stride-2 unit (paper Table 5)
    rows = [(116, 4), (232, 8), (464, 4)]
    blocks = [
        BlockSpec(Op.SHUFFLE, out_channels=channels, stride=2 if index == 0 else 1, activation=RELU)
        for channels, units in rows
        for index in range(units)
    ]
    # torchvision's ShuffleNetV2 has no dropout before its classifier
    return StemSpec(24, activation=RELU, pool=True), blocks, HeadSpec(1024, activation=RELU, dropout=0.0)


def _ghostnet_1_0() -> Parts:
    # (kernel, expanded, out, se, activation, stride): paper Table 1 / reference cfgs
    rows = [
        (3, 16, 16, 0.0, RELU, 1),
        (3, 48, 24, 0.0, RELU, 2),
        (3, 72, 24, 0.0, RELU, 1),
        (5, 72, 40, 0.25, RELU, 2),
        (5, 120, 40, 0.25, RELU, 1),
        (3, 240, 80, 0.0, RELU, 2),
        (3, 200, 80, 0.0, RELU, 1),
        (3, 184, 80, 0.0, RELU, 1),
        (3, 184, 80, 0.0, RELU, 1),
        (3, 480, 112, 0.25, RELU, 1),
        (3, 672, 112, 0.25, RELU, 1),
        (5, 672, 160, 0.25, RELU, 2),
        (5, 960, 160, 0.0, RELU, 1),
        (5, 960, 160, 0.25, RELU, 1),
        (5, 960, 160, 0.0, RELU, 1),
        (5, 960, 160, 0.25, RELU, 1),
    ]
    blocks = _explicit(Op.GHOST, rows, SEStyle.GHOSTNET)
    return StemSpec(16, activation=RELU), blocks, HeadSpec(960, 1280, activation=RELU, dropout=0.2)


def _proxylessnas_mobile() -> Parts:
    # (expand, channels, repeats, stride, kernel, se), one row per block as the searched net
    # chose each layer independently; profile order up_E-ks_K-st_S
    rows = [
        (1, 16, 1, 1, 3, 0.0),
        (3, 32, 1, 2, 5, 0.0),
        (3, 32, 1, 1, 3, 0.0),  # layers 3-4 of this stage were skipped by the search
        (3, 40, 1, 2, 7, 0.0),
        (3, 40, 1, 1, 3, 0.0),
        (3, 40, 2, 1, 5, 0.0),
        (6, 80, 1, 2, 7, 0.0),
        (3, 80, 3, 1, 5, 0.0),
        (6, 96, 1, 1, 5, 0.0),
        (3, 96, 3, 1, 5, 0.0),
        (6, 192, 2, 2, 7, 0.0),
        (3, 192, 2, 1, 7, 0.0),
        (6, 320, 1, 1, 7, 0.0),
    ]
    return StemSpec(32, activation=RELU6), _stages(rows, RELU6), HeadSpec(1280, activation=RELU6, dropout=0.0)


def _fbnet(layers: str, head: int) -> Parts:
    """FBNet's macro-architecture (paper Table 1) with one op name per searchable layer, written
    as the FBNet space names them (`k5_e6`, `k3_e1_g2`, `skip`)."""
    from search_spaces.spaces.fbnet import fbnet_blocks  # the space owns the op vocabulary

    blocks = fbnet_blocks(layers.split(), resolution=224)
    return StemSpec(16, activation=RELU), blocks, HeadSpec(head, activation=RELU, dropout=0.2)


def _fbnet_a() -> Parts:
    return _fbnet("skip  k3_e3 k3_e1 skip skip  k5_e6 k3_e3 k5_e1 k3_e3  k5_e6 k5_e3 k5_e1_g2 k5_e6  "
                  "k3_e6 k5_e1_g2 k5_e3 k3_e1_g2  k5_e6 k5_e6 k5_e3 k5_e6  k5_e6", 1504)


def _fbnet_b() -> Parts:
    return _fbnet("k3_e1  k3_e6 k5_e1 k3_e1 k3_e1  k5_e6 k5_e3 k3_e6 k5_e6  k5_e6 k5_e1 skip k5_e3  "
                  "k5_e6 k3_e1 k5_e1 k5_e3  k5_e6 k5_e1 k5_e6 k5_e6  k3_e6", 1984)


def _fbnet_c() -> Parts:
    return _fbnet("k3_e1  k3_e6 skip k3_e1 k3_e1  k5_e6 k5_e3 k5_e6 k3_e6  k5_e6 k5_e3 k5_e6 k5_e6  "
                  "k5_e6 k5_e6 k5_e6 k5_e3  k5_e6 k5_e6 k5_e6 k5_e6  k3_e6", 1984)


def _shufflenet_v1_g3() -> Parts:
    # (channels, units) for g=3 (paper Table 1); each stage opens with a stride-2 unit
    rows = [(240, 4), (480, 8), (960, 4)]
    blocks = [
        BlockSpec(Op.SHUFFLE_V1, out_channels=channels, stride=2 if index == 0 else 1, activation=RELU, groups=3)
        for channels, units in rows
        for index in range(units)
    ]
    return StemSpec(24, activation=RELU, pool=True), blocks, HeadSpec(None, activation=RELU, dropout=0.0)


_MODELS = {
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_large": _mobilenet_v3_large,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "mnasnet_a1": _mnasnet_a1,
    "mnasnet_b1": _mnasnet_b1,
    "efficientnet_b0": _efficientnet_b0,
    "shufflenet_v2_x1_0": _shufflenet_v2_x1_0,
    "ghostnet_1_0": _ghostnet_1_0,
    "proxylessnas_mobile": _proxylessnas_mobile,
    "fbnet_a": _fbnet_a,
    "fbnet_b": _fbnet_b,
    "fbnet_c": _fbnet_c,
    "shufflenet_v1_g3": _shufflenet_v1_g3,
    **SEED_MODELS,
}


def names() -> list[str]:
    """Every zoo model, in the order above (roughly by publication)."""
    return list(_MODELS)


def get(name: str, resolution: int = 224, num_classes: int = 1000) -> ArchSpec:
    """The published architecture `name` as an `ArchSpec` at the given input size and class count."""
    try:
        parts = _MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown zoo model {name!r}; known: {', '.join(_MODELS)}") from None
    stem, blocks, head = parts()
    return ArchSpec(stem, tuple(blocks), head, resolution=resolution, num_classes=num_classes, name=name)
