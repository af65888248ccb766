"""The reference zoo: every model builds and runs, round-trips as JSON, and counts exactly what
torchvision and the papers say (params, MACs at 224x224)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch
import torchvision

from predictors import Cost, count, macs_of_spec, params_of_spec
from search_spaces import ArchSpec, Op, SpecError, build_model, zoo

# Exact counts at 224x224, 1000 classes (MACs: conv + linear multiply-adds). A change here is a
# change to a block, the builder or the counter, and must be explained.
EXPECTED = {
    "mobilenet_v2": (3_504_872, 300_774_272),
    "mobilenet_v3_large": (5_483_032, 216_589_760),
    "mobilenet_v3_small": (2_542_856, 56_510_400),
    "mnasnet_a1": (3_887_038, 311_579_072),
    "mnasnet_b1": (4_383_312, 314_415_872),
    "efficientnet_b0": (5_288_548, 385_814_752),
    "shufflenet_v2_x1_0": (2_278_604, 144_907_992),
    "ghostnet_1_0": (5_182_508, 141_150_512),
    "proxylessnas_mobile": (4_080_512, 320_427_584),
    "fbnet_a": (4_321_464, 249_921_848),
    "fbnet_b": (4_813_048, 296_614_728),
    "fbnet_c": (5_572_200, 384_960_160),
    "shufflenet_v1_g3": (1_865_728, 137_460_672),
    "squeezenet1_0": (1_248_424, 818_924_576),
    "squeezenet1_1": (1_235_496, 349_151_936),
    "mobilenet_v1": (4_231_976, 568_740_352),
}
# (params, MACs) tolerance against the paper where 2% is not met, with the reason in zoo.py's notes:
# FBNet's MACs are held to the 3%; FBNet-B's parameters sit 6.9% above the paper's 4.5M.
TOLERANCE = {"fbnet_b": (0.07, 0.03), "fbnet_c": (0.02, 0.03)}

# ProxylessNAS-Mobile's blocks as its TF-Lite profile names them (up_E-ks_K-st_S), in order.
PROXYLESS_PROFILE = (
    "up_1-ks_3-st_1 up_3-ks_5-st_2 up_3-ks_3-st_1 up_3-ks_7-st_2 up_3-ks_3-st_1 up_3-ks_5-st_1 "
    "up_3-ks_5-st_1 up_6-ks_7-st_2 up_3-ks_5-st_1 up_3-ks_5-st_1 up_3-ks_5-st_1 up_6-ks_5-st_1 "
    "up_3-ks_5-st_1 up_3-ks_5-st_1 up_3-ks_5-st_1 up_6-ks_7-st_2 up_6-ks_7-st_1 up_3-ks_7-st_1 "
    "up_3-ks_7-st_1 up_6-ks_7-st_1"
).split()
PROFILE_FILE = Path("/work/shared/data/luts/proxylessnas_pixel1/proxyless_mobile_10_latency.txt")


@functools.cache
def cost_at_224(name: str) -> Cost:
    return count(zoo.get(name))


def test_names_and_tables_agree() -> None:
    assert zoo.names() == list(EXPECTED)
    assert set(zoo.PUBLISHED) == set(zoo.names())
    assert set(zoo.TORCHVISION_NAMES) <= set(zoo.names())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown zoo model 'resnet50'; known: mobilenet_v2"):
        zoo.get("resnet50")


def test_bad_resolution_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="resolution=4 must be >= 8"):
        zoo.get("mobilenet_v2", resolution=4)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builds_runs_and_round_trips(name: str) -> None:
    spec = zoo.get(name, resolution=64, num_classes=10)
    assert spec.name == name and spec.resolution == 64
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 10)
    assert torch.isfinite(out).all()
    again = ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.content_hash() == spec.content_hash()
    assert again.name == name


@pytest.mark.parametrize("name", list(EXPECTED))
def test_exact_counts_at_224(name: str) -> None:
    cost = cost_at_224(name)
    assert (cost.params, cost.macs) == EXPECTED[name]
    # the closed forms agree with fvcore's traced count and the built model on every zoo model
    assert macs_of_spec(zoo.get(name)) == cost.macs
    assert params_of_spec(zoo.get(name)) == cost.params


@pytest.mark.parametrize("name", list(EXPECTED))
def test_within_two_percent_of_published(name: str) -> None:
    cost, published = cost_at_224(name), zoo.PUBLISHED[name]
    params_tolerance, macs_tolerance = TOLERANCE.get(name, (0.02, 0.02))
    assert abs(cost.params / published.params - 1) <= params_tolerance, (cost.params, published)
    assert abs(cost.macs / published.macs - 1) <= macs_tolerance, (cost.macs, published)


@pytest.mark.parametrize("name", sorted(zoo.TORCHVISION_NAMES))
def test_params_equal_torchvision(name: str) -> None:
    reference = torchvision.models.get_model(zoo.TORCHVISION_NAMES[name], weights=None)
    reference_params = sum(parameter.numel() for parameter in reference.parameters())
    assert reference_params == EXPECTED[name][0]
    assert sum(parameter.numel() for parameter in build_model(zoo.get(name)).parameters()) == reference_params


@pytest.mark.parametrize("name", sorted(zoo.TORCHVISION_NAMES))
def test_macs_equal_torchvision(name: str) -> None:
    # the same counter on both networks, at 96x96 to stay fast
    reference = torchvision.models.get_model(zoo.TORCHVISION_NAMES[name], weights=None)
    assert count(reference, 96).macs == count(zoo.get(name, resolution=96)).macs


def test_mnasnet_b1_head_is_torchvisions_separable_conv() -> None:
    # torchvision writes dw 3x3 BN ReLU, pw 1x1 BN (linear) out by hand; an MBConv with expand 1
    # (no expand conv since mid == in) is exactly that
    first = zoo.get("mnasnet_b1").blocks[0]
    assert (first.op, first.expand_ratio, first.kernel, first.out_channels) == (Op.MBCONV, 1.0, 3, 16)
    block = build_model(zoo.get("mnasnet_b1")).blocks[0]
    assert isinstance(block.expand, torch.nn.Identity) and not block.residual


def test_proxylessnas_matches_its_profile() -> None:
    blocks = zoo.get("proxylessnas_mobile").blocks
    assert [f"up_{b.expand_ratio:g}-ks_{b.kernel}-st_{b.stride}" for b in blocks] == PROXYLESS_PROFILE
    if PROFILE_FILE.is_file():  # the shared data set, when this checkout has it
        names = re.findall(r"expanded_conv(?:_(\d+))?/(up_\d+-ks_\d+-st_\d+)-id_\d+/expand", PROFILE_FILE.read_text())
        names += re.findall(r"expanded_conv()/(up_1-ks_\d+-st_\d+)-id_\d+/depthwise", PROFILE_FILE.read_text())
        ordered = [block for _, block in sorted(set(names), key=lambda item: int(item[0] or 0))]
        assert ordered == PROXYLESS_PROFILE


def test_resolution_and_classes_pass_through() -> None:
    spec = zoo.get("ghostnet_1_0", resolution=160, num_classes=100)
    assert (spec.resolution, spec.num_classes) == (160, 100)
    assert spec.blocks == zoo.get("ghostnet_1_0").blocks


def test_cli_zoo_json_and_table() -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["zoo", "mobilenet_v3_small", "ghostnet_1_0", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert (rows["mobilenet_v3_small"]["params"], rows["mobilenet_v3_small"]["macs"]) == EXPECTED["mobilenet_v3_small"]
    assert rows["mobilenet_v3_small"]["torchvision_params"] == EXPECTED["mobilenet_v3_small"][0]
    assert rows["ghostnet_1_0"]["torchvision_params"] is None
    assert rows["ghostnet_1_0"]["macs_diff_percent"] == 0.11
    table = runner.invoke(app, ["zoo", "mnasnet_b1"], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "mnasnet_b1" in table.stdout and "4,383,312 (=)" in table.stdout
    unknown = runner.invoke(app, ["zoo", "resnet50"])
    assert unknown.exit_code == 2 and "unknown zoo model 'resnet50'" in unknown.output
