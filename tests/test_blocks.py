"""Blocks: shapes, shortcuts, squeeze-excite widths and parameter counts computed by hand."""

from __future__ import annotations

import pytest
import torch

from search_spaces import BlockSpec, Op, build_block, make_divisible
from search_spaces.blocks import GhostModule, SqueezeExcite, channel_shuffle, se_squeeze_channels
from search_spaces.spec import SEStyle


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_make_divisible_matches_the_papers_rounding() -> None:
    assert [make_divisible(v, 8) for v in (16, 18, 20, 28, 36, 3.2)] == [16, 24, 24, 32, 40, 8]  # 18 -> 16 would drop >10%, so 24
    assert make_divisible(72 * 0.25, 4) == 20  # GhostNet's SE on 72 channels
    assert make_divisible(72 // 4, 8) == 24  # MobileNetV3's SE on 72 channels


def test_mbconv_with_expansion_counts_by_hand() -> None:
    block = build_block(BlockSpec(Op.MBCONV, 16, kernel=3, expand_ratio=6), 16)
    # expand 16*96 + BN 2*96, depthwise 96*9 + BN 2*96, project 96*16 + BN 2*16
    assert params(block) == 1536 + 192 + 864 + 192 + 1536 + 32
    assert block.residual
    x = torch.randn(2, 16, 8, 8)
    assert block.eval()(x).shape == (2, 16, 8, 8)


def test_mbconv_expansion_one_has_no_expand_conv_and_no_shortcut_when_widths_differ() -> None:
    block = build_block(BlockSpec(Op.MBCONV, 16, kernel=3, expand_ratio=1), 32)
    assert isinstance(block.expand, torch.nn.Identity)
    assert not block.residual
    assert params(block) == 32 * 9 + 64 + 32 * 16 + 32


def test_strided_mbconv_has_no_shortcut() -> None:
    block = build_block(BlockSpec(Op.MBCONV, 16, stride=2, expand_ratio=3), 16)
    assert not block.residual
    assert block.eval()(torch.randn(1, 16, 9, 9)).shape == (1, 16, 5, 5)


@pytest.mark.parametrize(
    ("style", "block_in", "mid", "expected"),
    [(SEStyle.EFFICIENTNET, 40, 240, 10), (SEStyle.MOBILENETV3, 40, 120, 32), (SEStyle.GHOSTNET, 40, 120, 32),
     (SEStyle.EFFICIENTNET, 3, 18, 1)],
)
def test_se_widths_follow_each_paper(style: SEStyle, block_in: int, mid: int, expected: int) -> None:
    assert se_squeeze_channels(style, 0.25, block_in, mid) == expected


def test_se_gates() -> None:
    spec = BlockSpec(Op.MBCONV, 40, expand_ratio=6, se_ratio=0.25, se_style=SEStyle.MOBILENETV3)
    se = SqueezeExcite.for_block(spec, 40, 240)
    assert isinstance(se.gate, torch.nn.Hardsigmoid)
    assert params(se) == 240 * 64 + 64 + 64 * 240 + 240
    se = SqueezeExcite.for_block(BlockSpec(Op.MBCONV, 40, expand_ratio=6, se_ratio=0.25), 40, 240)
    assert isinstance(se.gate, torch.nn.Sigmoid)


def test_channel_shuffle_interleaves_halves() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shuffle_unit_stride1_keeps_half_untouched() -> None:
    block = build_block(BlockSpec(Op.SHUFFLE, 24), 24).eval()
    x = torch.randn(1, 24, 6, 6)
    out = block(x)
    assert out.shape == x.shape
    # after the shuffle the untouched half sits at even channel positions
    assert torch.equal(out[:, 0::2], x[:, :12])


def test_shuffle_unit_stride2_doubles_width_and_halves_size() -> None:
    block = build_block(BlockSpec(Op.SHUFFLE, 116, stride=2), 24).eval()
    assert block(torch.randn(1, 24, 56, 56)).shape == (1, 116, 28, 28)
    # torchvision's first unit of ShuffleNetV2 1.0x: branch1 dw(24)+BN, pw 24->58+BN; branch2 pw 24->58, dw 58, pw 58->58
    assert params(block) == (24 * 9 + 48 + 24 * 58 + 116) + (24 * 58 + 116 + 58 * 9 + 116 + 58 * 58 + 116)


def test_ghost_module_slices_to_odd_width() -> None:
    module = GhostModule(8, 7, None).eval()
    assert module(torch.randn(1, 8, 4, 4)).shape == (1, 7, 4, 4)
    # primary 1x1 8->4 + BN, cheap dw3x3 on 4 + BN
    assert params(module) == 32 + 8 + 36 + 8


def test_ghost_bottleneck_shortcut() -> None:
    same = build_block(BlockSpec(Op.GHOST, 16, mid_channels=48), 16)
    assert isinstance(same.shortcut, torch.nn.Identity)
    down = build_block(BlockSpec(Op.GHOST, 24, stride=2, kernel=5, mid_channels=48), 16).eval()
    assert down(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)
    assert not isinstance(down.shortcut, torch.nn.Identity)


def test_dsconv_counts_by_hand() -> None:
    block = build_block(BlockSpec(Op.DSCONV, 64, stride=2), 32).eval()
    assert params(block) == 32 * 9 + 64 + 32 * 64 + 128
    assert block(torch.randn(1, 32, 8, 8)).shape == (1, 64, 4, 4)
