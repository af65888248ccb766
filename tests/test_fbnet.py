"""The `fbnet` space (HW-NAS-Bench's FBNet space), its blocks (grouped 1x1 convs + shuffle, FBNet's
always-expanding inverted residual, the 1x1 `skip`, the ShuffleNet V1 unit) and their closed-form
costs. The shared HW-NAS-Bench data, when present, is decoded architecture by architecture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from predictors.cost import count, layer_macs, macs_of_spec
from search_spaces.build import build_model, layer_shapes
from search_spaces.spaces import get_space
from search_spaces.spaces.fbnet import LAYERS, OPS, FBNetSpace, op_block
from search_spaces.spec import Activation, ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HWNAS_SHARED_DATA", ROOT.parent / "shared" / "data")) / "luts" / "hwnasbench_fbnet" / \
    "help_fbnet_latency.json"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"needs the shared HW-NAS-Bench data ({DATA})")
RELU = Activation.RELU


def one_block(block: BlockSpec, channels: int = 16, resolution: int = 16) -> ArchSpec:
    return ArchSpec(StemSpec(channels, 3, 1, RELU), (block,), HeadSpec(None, dropout=0.0), resolution, 10)


# -- blocks and costs ------------------------------------------------------------------------------
def test_groups_left_out_of_json_and_hash_when_one() -> None:
    plain = BlockSpec(Op.MBCONV, 24, 2, 3, 6.0)
    assert "groups" not in plain.to_dict() and plain.to_string() == "mb_k3_e6_c24_s2_relu"
    grouped = BlockSpec(Op.IRF, 24, 1, 5, 1.0, groups=2)
    assert grouped.to_dict()["groups"] == 2 and grouped.to_string() == "irf_k5_e1_c24_s1_g2_relu"
    assert BlockSpec.from_string(grouped.to_string()) == grouped
    assert BlockSpec.from_dict(grouped.to_dict()) == grouped


def test_block_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"block.groups=2 must be 1 for op 'ghost'"):
        BlockSpec(Op.GHOST, 24, groups=2)
    with pytest.raises(SpecError, match=r"block.kernel=3 not in \{1\}"):
        BlockSpec(Op.PW, 24, kernel=3)
    with pytest.raises(SpecError, match=r"blocks\[0\].groups=2 does not divide its input width 15"):
        one_block(BlockSpec(Op.IRF, 16, 1, 3, 1.0, groups=2), channels=15)
    with pytest.raises(SpecError, match=r"blocks\[0\].out_channels=16 must exceed its input width 24"):
        one_block(BlockSpec(Op.SHUFFLE_V1, 16, 2, groups=2), channels=24)


def test_irf_keeps_the_expand_at_e1_and_shuffles_when_grouped() -> None:
    block = build_model(one_block(BlockSpec(Op.IRF, 16, 1, 3, 1.0, groups=2))).blocks[0]
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.groups) for c in convs] == [
        (16, 16, 1, 2), (16, 16, 3, 16), (16, 16, 1, 2)]
    assert block.residual
    # grouped 1x1: 16 * 16 / 2 weights at 16x16 positions, twice; depthwise 16 * 9 per position
    layer = layer_shapes(one_block(BlockSpec(Op.IRF, 16, 1, 3, 1.0, groups=2)))[1]
    assert layer_macs(layer) == 2 * 256 * 16 * 8 + 256 * 16 * 9


@pytest.mark.parametrize("block", [
    BlockSpec(Op.IRF, 24, 2, 5, 1.0, groups=2), BlockSpec(Op.IRF, 24, 1, 3, 6.0), BlockSpec(Op.PW, 32, 2, 1),
    BlockSpec(Op.MBCONV, 32, 1, 3, 3.0, groups=2), BlockSpec(Op.SHUFFLE_V1, 48, 2, groups=2),
    BlockSpec(Op.SHUFFLE_V1, 16, 1, groups=2), BlockSpec(Op.SHUFFLE_V1, 64, 2, groups=4),
], ids=lambda b: b.to_string())
def test_closed_form_equals_fvcore(block: BlockSpec) -> None:
    spec = one_block(block)
    out = build_model(spec).eval()(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    assert macs_of_spec(spec) == count(spec).macs


def test_shufflenet_v1_first_unit_is_not_grouped() -> None:
    from search_spaces import zoo

    first = build_model(zoo.get("shufflenet_v1_g3")).blocks[0]
    assert first.expand[0].groups == 1 and first.project[0].groups == 3
    assert first.project[0].out_channels == 240 - 24  # the pooled input fills the rest
    second = build_model(zoo.get("shufflenet_v1_g3")).blocks[4]  # stage 3's first unit
    assert second.expand[0].groups == 3


# -- the space -------------------------------------------------------------------------------------
def test_layout_as_published() -> None:
    cifar, imagenet = get_space("fbnet", resolution=32, num_classes=100), get_space("fbnet")
    assert isinstance(cifar, FBNetSpace) and len(cifar.decisions) == LAYERS == 22
    assert cifar.cardinalities == [9] * 22 and cifar.decisions[0].labels == OPS
    assert (cifar.stem.stride, cifar.strides, cifar.head.conv_channels) == (1, [1, 1, 2, 2, 1, 2, 1], 1504)
    assert (imagenet.stem.stride, imagenet.strides, imagenet.head.conv_channels) == (2, [1, 2, 2, 2, 1, 2, 1], 1984)
    # 32 px: stride-2 stages at layers 6, 10, 18 -> a 4x4 map; 224 px ends at 7x7
    assert layer_shapes(cifar.decode([0] * 22))[-1].in_size == 4
    assert layer_shapes(imagenet.decode([0] * 22))[-1].in_size == 7


def test_skip_is_absent_or_a_pointwise_conv() -> None:
    assert op_block("skip", 16, 16, 1) is None
    assert op_block("skip", 16, 24, 1) == BlockSpec(Op.PW, 24, 1, 1)
    s = get_space("fbnet", resolution=32, num_classes=100)
    arch = s.decode([8] * 22)
    assert [b.to_string() for b in arch.blocks] == [f"pw_k1_e1_c{c}_s{st}_relu" for c, st in
                                                   ((24, 1), (32, 2), (64, 2), (112, 1), (184, 2), (352, 1))]
    assert s.arch_string(arch) == "-".join(["skip"] * 22)


def test_canonical_vectors_and_round_trips() -> None:
    s = get_space("fbnet", resolution=32, num_classes=100)
    rng = np.random.default_rng(0)
    for _ in range(200):
        vector = [int(i) for i in rng.integers(0, 9, 22)]
        arch = s.decode(vector)
        assert list(s.encode(arch)) == s.canonical(vector)
        assert s.decode(s.canonical(vector)) == arch
        child = s.mutate(arch, rng)
        assert child != arch and s.decode(s.encode(child)) == child
    # within a stage, skips move last: [A, skip, B, skip] == [A, B, skip, skip]
    a = s.from_arch_string("-".join(["k3_e1"] + ["k3_e3", "skip", "k5_e6", "skip"] + ["k3_e1"] * 17))
    b = s.from_arch_string("-".join(["k3_e1"] + ["k3_e3", "k5_e6", "skip", "skip"] + ["k3_e1"] * 17))
    assert a == b


def test_size_counts_networks() -> None:
    # per stage: 9 first-layer choices x (1 + 8 + 64 + 512) for the rest of a 4-layer stage
    assert get_space("fbnet").size() == 9 * (9 * 585) ** 5 * 9


def test_candidate_ops_cover_sampled_layers() -> None:
    for resolution, classes in ((32, 100), (224, 1000)):
        s = get_space("fbnet", resolution=resolution, num_classes=classes)
        keys = {layer.signature for layer in s.candidate_ops()}
        assert len(keys) == len(s.candidate_ops()) == 104
        rng = np.random.default_rng(1)
        for _ in range(50):
            assert {layer.signature for layer in layer_shapes(s.sample(rng))} <= keys


def test_arch_strings_are_checked() -> None:
    s = get_space("fbnet", resolution=32, num_classes=100)
    with pytest.raises(SpecError, match=r"fbnet: 3 layer\(s\) in 'k3_e1-skip-k5_e6', expected 22"):
        s.parse_ops("k3_e1-skip-k5_e6")
    with pytest.raises(SpecError, match=r"unknown op\(s\) layer 2 'k7_e6'"):
        s.parse_ops("-".join(["k3_e1", "k7_e6"] + ["skip"] * 20))
    with pytest.raises(SpecError, match=r"fbnet: blocks\[0\].kernel=7 \(expected 5\)|no fbnet op"):
        s.encode(s.decode([0] * 22).with_blocks([BlockSpec(Op.IRF, 16, 1, 7, 1.0)]))


def test_zoo_fbnets_are_in_the_imagenet_space() -> None:
    from search_spaces import zoo

    s = get_space("fbnet")
    for name in ("fbnet_a", "fbnet_b", "fbnet_c"):
        arch = zoo.get(name).replace(head=s.head)  # FBNet-A's head is 1504 wide, the space's 1984
        assert s.decode(s.encode(arch)) == arch
    assert s.arch_string(zoo.get("fbnet_a").replace(head=s.head)).startswith("skip-k3_e3-k3_e1-skip-skip-k5_e6")


@needs_data
def test_every_data_architecture_decodes() -> None:
    data = json.loads(DATA.read_text())
    assert tuple(data["ops"]) == OPS
    s = get_space("fbnet", resolution=32, num_classes=100)
    for vector in data["archs"]:
        assert list(s.encode(s.decode(vector))) == s.canonical(vector)
