"""The words a spec is written in: its error, its enums (op, activation, SE style) and the allowed
kernels and strides.

Its own module so that both the spec (`spec.py`) and the block-string codec (`block_strings.py`)
can use them without importing each other.
"""

from __future__ import annotations

from enum import Enum

from search_spaces.errors import UserError


class SpecError(UserError, ValueError):
    """An architecture or block specification is invalid; the message names the field."""


class Op(str, Enum):
    """Block types; each maps to one module class in the block registry."""

    MBCONV = "mbconv"  # inverted residual with linear bottleneck (MobileNetV2, MnasNet, EfficientNet)
    SHUFFLE = "shuffle"  # ShuffleNetV2 unit (channel split, shuffle; stride-2 variant)
    GHOST = "ghost"  # Ghost bottleneck (GhostNet)
    DSCONV = "dsconv"  # depthwise-separable conv (MobileNetV1)
    CELL = "cell"  # NAS-Bench-201 cell: 4 nodes, one op per edge (`BlockSpec.edges`)
    RESBLOCK = "resblock"  # pre-activation ResNet basic block (NAS-Bench-201's reduction block)
    IRF = "irf"  # FBNet's inverted residual: MBConv whose 1x1 expand is always present (also at e1)
    PW = "pw"  # 1x1 conv + BN + act (FBNet's `skip` where the shape changes); kernel 1
    SHUFFLE_V1 = "shufflev1"  # ShuffleNet V1 unit (grouped 1x1s, shuffle; stride 2 concatenates a pooled input)
    FIRE = "fire"  # SqueezeNet's fire module (squeeze 1x1, expand 1x1 and kxk concatenated; stride 2 max-pools first)


class Activation(str, Enum):
    RELU = "relu"
    RELU6 = "relu6"
    HSWISH = "hswish"
    SWISH = "swish"
    NONE = "none"  # linear: NAS-Bench-201's stem is conv + BN, its cells and blocks start with ReLU


class SEStyle(str, Enum):
    """How squeeze-excite sizes its bottleneck and gates, as each paper does.

    - `efficientnet` (MnasNet, EfficientNet): squeeze = max(1, int(block_in * ratio)), sigmoid gate,
      the block's activation inside.
    - `mobilenetv3`: squeeze = make_divisible(mid * ratio, 8), hard-sigmoid gate, ReLU inside.
    - `ghostnet`: squeeze = make_divisible(mid * ratio, 4), hard-sigmoid gate, ReLU inside.
    """

    EFFICIENTNET = "efficientnet"
    MOBILENETV3 = "mobilenetv3"
    GHOSTNET = "ghostnet"


KERNELS = (3, 5, 7)
# NAS-Bench-201's op names and order (Dong & Yang, ICLR 2020): the order its index-based tools use.
CELL_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (from node, to node) of a cell's 6 edges, in the order NB201's arch string lists them:
# |1<-0|+|2<-0|2<-1|+|3<-0|3<-1|3<-2|
CELL_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
PW_KERNELS = (1,)  # the only kernel of op 'pw'
STRIDES = (1, 2)
STEM_KERNELS = (1, 3, 5, 7)
CLASSIFIERS = ("linear", "conv")  # `HeadSpec.classifier`: a linear layer after pooling, or SqueezeNet's 1x1 conv before it
