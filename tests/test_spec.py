"""ArchSpec/BlockSpec: JSON and string round trips, stable hashes, and precise validation errors."""

from __future__ import annotations

import json

import pytest

from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec, layer_shapes


def tiny_spec(**changes) -> ArchSpec:
    spec = ArchSpec(
        stem=StemSpec(16, activation="relu6"),
        blocks=(
            BlockSpec(Op.MBCONV, 24, stride=2, kernel=5, expand_ratio=6, se_ratio=0.25, activation="swish"),
            BlockSpec(Op.SHUFFLE, 24, kernel=3),
            BlockSpec(Op.GHOST, 32, stride=2, kernel=5, mid_channels=72, se_ratio=0.25, se_style="ghostnet"),
            BlockSpec(Op.DSCONV, 40),
        ),
        head=HeadSpec(conv_channels=64, hidden_channels=128, activation="hswish", dropout=0.1),
        resolution=32,
        num_classes=10,
        name="tiny",
    )
    return spec.replace(**changes) if changes else spec


def test_json_round_trip_is_exact() -> None:
    spec = tiny_spec()
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.name == "tiny"


def test_hash_is_stable_and_ignores_the_name() -> None:
    spec = tiny_spec()
    # The literal pins the canonical serialisation: changing it silently would orphan stored results.
    assert spec.content_hash() == tiny_spec(name="other").content_hash()
    assert spec.content_hash() == ArchSpec.from_dict(json.loads(spec.to_json())).content_hash()
    assert spec.content_hash() == "4ecab9293b01d500"
    assert spec.content_hash() != tiny_spec(resolution=64).content_hash()


def test_int_and_float_ratios_hash_alike() -> None:
    a = BlockSpec(Op.MBCONV, 24, expand_ratio=6)
    b = BlockSpec(Op.MBCONV, 24, expand_ratio=6.0)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["expand_ratio"] == 6.0


@pytest.mark.parametrize(
    "text",
    ["mb_k5_e6_c40_s2_se0.25_relu", "sh_k3_e1_c24_s1_relu", "gh_k5_m72_c32_s2_seg0.25_relu", "ds_k3_e1_c40_s1_relu6",
     "mb_k3_m88_c24_s1_sev30.25_hswish"],
)
def test_block_string_round_trip(text: str) -> None:
    block = BlockSpec.from_string(text)
    assert block.to_string() == text
    assert BlockSpec.from_string(block.to_string()) == block


def test_block_string_fields() -> None:
    block = BlockSpec.from_string("mb_k5_e6_c40_s2_se0.25_swish")
    assert (block.op, block.kernel, block.expand_ratio, block.out_channels, block.stride) == (Op.MBCONV, 5, 6.0, 40, 2)
    assert (block.se_ratio, block.activation.value) == (0.25, "swish")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("blocks", 1, "kernel"), 4, "blocks[1].kernel=4 not in {3, 5, 7}"),
        (("blocks", 0, "stride"), 3, "blocks[0].stride=3 not in {1, 2}"),
        (("blocks", 0, "op"), "conv", "blocks[0].op='conv' not in {mbconv, shuffle, ghost, dsconv, cell, resblock, irf, pw, shufflev1, fire}"),
        (("blocks", 0, "activation"), "gelu", "blocks[0].activation='gelu' not in {relu, relu6, hswish, swish, none}"),
        (("blocks", 0, "se_ratio"), 1.5, "blocks[0].se_ratio=1.5 must be in [0.0, 1.0]"),
        (("blocks", 0, "expand_ratio"), 0, "blocks[0].expand_ratio=0 must be in (0.0, 16.0]"),
        (("blocks", 2, "out_channels"), 0, "blocks[2].out_channels=0 must be >= 1"),
        (("blocks", 1, "out_channels"), 23, "blocks[1].out_channels=23 must be even for op 'shuffle'"),
        (("blocks", 3, "se_ratio"), 0.25, "blocks[3].se_ratio=0.25 must be 0.0 for op 'dsconv'"),
        (("stem", "kernel"), 2, "stem.kernel=2 not in {1, 3, 5, 7}"),
        (("head", "dropout"), 1.0, "head.dropout=1.0 must be in [0.0, 0.95]"),
        (("resolution",), 4, "resolution=4 must be >= 8"),
        (("num_classes",), 1, "num_classes=1 must be >= 2"),
    ],
)
def test_bad_fields_name_the_field_and_allowed_values(path: tuple, value: object, message: str) -> None:
    data = tiny_spec().to_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(SpecError) as error:
        ArchSpec.from_dict(data)
    assert message in str(error.value)


def test_stride1_shuffle_must_keep_width() -> None:
    data = tiny_spec().to_dict()
    data["blocks"][1]["out_channels"] = 48
    with pytest.raises(SpecError, match=r"blocks\[1\]\.out_channels=48 must equal its input width 24"):
        ArchSpec.from_dict(data)


def test_unknown_and_missing_fields() -> None:
    data = tiny_spec().to_dict()
    data["blocks"][0]["kernal"] = 3
    with pytest.raises(SpecError, match=r"blocks\[0\]: unknown field\(s\) \['kernal'\]"):
        ArchSpec.from_dict(data)
    data = tiny_spec().to_dict()
    del data["blocks"][2]["out_channels"]
    with pytest.raises(SpecError, match=r"blocks\[2\]\.out_channels is missing"):
        ArchSpec.from_dict(data)
    with pytest.raises(SpecError, match="schema_version=7 not in"):
        ArchSpec.from_dict({**tiny_spec().to_dict(), "schema_version": 7})
    with pytest.raises(SpecError, match="not valid JSON"):
        ArchSpec.from_json("{")


def test_layer_shapes_follow_strides() -> None:
    shapes = layer_shapes(tiny_spec())
    assert [(s.name, s.in_channels, s.in_size, s.out_channels, s.out_size) for s in shapes] == [
        ("stem", 3, 32, 16, 16),
        ("blocks.0", 16, 16, 24, 8),
        ("blocks.1", 24, 8, 24, 8),
        ("blocks.2", 24, 8, 32, 4),
        ("blocks.3", 32, 4, 40, 4),
        ("head", 40, 4, 10, 1),
    ]
    assert shapes[1].signature == "mb_k5_e6_c24_s2_se0.25_swish@16x16x16"
    assert shapes[0].signature == "stem_k3_c16_s2_relu6@3x32x32"
    assert shapes[-1].signature == "head_conv64_hidden128_hswish_classes10@40x4x4"
