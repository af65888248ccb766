"""The `nb201` space: NAS-Bench-201's cell (Dong & Yang, ICLR 2020) in NB201's network skeleton.

The cost parity test reads the shared NB201 table (`$HWNAS_SHARED_DATA/nb201/nb201.csv`, default
`../shared/data` next to the repository) and skips when it is absent. What it establishes, on all
15,625 cells and all three data sets (CIFAR-10 32x32/10 classes, CIFAR-100 32x32/100,
ImageNet16-120 16x16/120):
- params: `params_of_spec` == the data's `params_*` x 1e6 exactly (BN scale and shift included);
- FLOPs: the data's `flops_*` x 1e6 == `macs_of_spec(spec, with_bias=True)` exactly, i.e. our
  MACs + `num_classes` (the classifier's bias adds; no other layer has a bias). Pooling (the cell's
  3x3 average pool, the reduction shortcut's 2x2 one), BN and ReLU are not counted.
"""

from __future__ import annotations

import csv
import functools
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from predictors.cost import layer_macs, layer_params, macs_of_spec, params_of_spec
from search_spaces.build import LayerShape, build_model, layer_shapes
from search_spaces.spaces import SPACES, NB201Space, get_space
from search_spaces.spaces.nb201 import CELLS_PER_STAGE, CHANNELS, format_arch_string, parse_arch_string, reaches_output
from search_spaces.spec import CELL_OPS, ArchSpec, BlockSpec, Op, SpecError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HWNAS_SHARED_DATA", REPO.parent / "shared" / "data"))
TABLE = SHARED / "nb201" / "nb201.csv"
needs_table = pytest.mark.skipif(not TABLE.is_file(), reason=f"needs the shared NB201 table ({TABLE})")

# (column suffix, resolution, classes): NB201's three training settings
DATASETS = (("cifar10", 32, 10), ("cifar100", 32, 100), ("imagenet16", 16, 120))
ALL_EDGES = list(itertools.product(CELL_OPS, repeat=6))
# NB201 index 0, and its published cost on CIFAR-10: 15.64737 MFLOPs, 0.129306 M params
INDEX0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
# the best CIFAR-100 cell (NB201 index 9930)
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def space(resolution: int = 32, num_classes: int = 10) -> NB201Space:
    built = get_space("nb201", resolution=resolution, num_classes=num_classes)
    assert isinstance(built, NB201Space)
    return built


@pytest.fixture(scope="module")
def table() -> list[dict[str, str]]:
    with TABLE.open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- the space ------------------------------------------------------------------------------------
def test_six_edges_of_five_ops() -> None:
    s = space()
    assert "nb201" in SPACES.names()
    assert [d.name for d in s.decisions] == ["edge1<-0", "edge2<-0", "edge2<-1", "edge3<-0", "edge3<-1", "edge3<-2"]
    assert s.cardinalities == [5] * 6 and s.size() == 15_625
    assert s.decisions[0].labels == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def test_skeleton_of_index_0() -> None:
    arch = space().from_arch_string(INDEX0)
    assert arch.block_strings() == (["cell_c16_o421211_relu"] * 5 + ["rb_k3_c32_s2_relu"]
                                    + ["cell_c32_o421211_relu"] * 5 + ["rb_k3_c64_s2_relu"]
                                    + ["cell_c64_o421211_relu"] * 5)
    shapes = [(layer.name, layer.in_channels, layer.in_size, layer.out_channels) for layer in layer_shapes(arch)]
    assert shapes[0] == ("stem", 3, 32, 16) and shapes[6] == ("blocks.5", 16, 32, 32)
    assert shapes[12] == ("blocks.11", 32, 16, 64) and shapes[-1] == ("head", 64, 8, 10)
    assert (params_of_spec(arch), macs_of_spec(arch), macs_of_spec(arch, with_bias=True)) == (
        129_306, 15_647_360, 15_647_370)


def test_arch_strings_round_trip_for_all_15625_cells() -> None:
    s = space()
    for edges in ALL_EDGES:
        text = format_arch_string(edges)
        assert parse_arch_string(text) == edges
    # through specs and vectors for a spread of them (each spec validates 17 blocks: not all 15,625)
    for edges in ALL_EDGES[::97] + [parse_arch_string(INDEX0), parse_arch_string(BEST)]:
        text = format_arch_string(edges)
        arch = s.from_arch_string(text)
        assert s.arch_string(arch) == text
        vector = s.encode(arch)
        assert list(vector) == [CELL_OPS.index(op) for op in edges]
        assert s.decode(vector) == arch


def test_json_round_trip_and_hash_of_a_cell_spec() -> None:
    arch = space().from_arch_string(BEST)
    again = ArchSpec.from_json(arch.to_json())
    assert again == arch and again.content_hash() == arch.content_hash()
    assert arch.to_dict()["blocks"][0]["edges"] == list(parse_arch_string(BEST))
    assert "edges" not in arch.to_dict()["blocks"][5]  # a resblock's JSON is as any older block's
    assert arch.to_dict()["head"]["preact"] is True and arch.to_dict()["stem"]["activation"] == "none"


def test_sample_mutate_encode() -> None:
    s, rng = space(16, 120), np.random.default_rng(0)
    for _ in range(20):
        arch = s.sample(rng)
        child = s.mutate(arch, rng)
        changed = [a != b for a, b in zip(s.encode(arch), s.encode(child))]
        assert sum(changed) == 1  # exactly one edge op differs
        assert s.decode(s.encode(child)) == child


def test_bad_strings_and_specs_are_refused_precisely() -> None:
    s = space()
    with pytest.raises(SpecError, match=r"op 'conv_5x5' not in \{none, skip_connect"):
        parse_arch_string(INDEX0.replace("avg_pool_3x3", "conv_5x5"))
    with pytest.raises(SpecError, match="node 2 must have 2 input"):
        parse_arch_string("|none~0|+|none~0|+|none~0|none~1|none~2|")
    with pytest.raises(SpecError, match=r"'none~1' must read '<op>~0'"):
        parse_arch_string("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(SpecError, match="multiple of 4"):
        get_space("nb201", resolution=30, num_classes=10)
    mixed = s.from_arch_string(INDEX0)
    blocks = list(mixed.blocks)
    blocks[2] = BlockSpec(Op.CELL, 16, edges=("none",) * 6)
    with pytest.raises(SpecError, match=r"blocks\[2\]\.edges=.* does not fit \(every cell must be the same\)"):
        s.encode(mixed.with_blocks(blocks))
    with pytest.raises(SpecError, match=r"blocks\[0\]\.edges has 5 ops, expected 6"):
        ArchSpec.from_dict({**mixed.to_dict(), "blocks": [{"op": "cell", "out_channels": 16, "edges": ["none"] * 5}]})
    with pytest.raises(SpecError, match=r"block\.edges=\['none'\] is only for op 'cell'"):
        BlockSpec(Op.MBCONV, 16, edges=("none",))
    with pytest.raises(SpecError, match=r"blocks\[0\]\.out_channels=32 must equal its input width 16 for a 'cell'"):
        mixed.with_blocks([BlockSpec(Op.CELL, 32, edges=("skip_connect",) * 6)])


def test_candidate_ops_cover_every_layer() -> None:
    s = space(16, 120)
    candidates = s.candidate_ops()
    assert len(candidates) == 1 + 2 + 3 * 15_625 + 1  # stem, two resblocks, cells per stage, head
    signatures = {layer.signature for layer in candidates}
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert {layer.signature for layer in layer_shapes(s.sample(rng))} <= signatures


# -- building ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "resolution", "classes"), DATASETS)
def test_forward_pass_on_each_dataset_shape(name: str, resolution: int, classes: int) -> None:
    s = space(resolution, classes)
    for text in (INDEX0, BEST):
        model = build_model(s.from_arch_string(text)).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, resolution, resolution))
        assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_341_cells_cut_the_output_off_and_build_a_constant() -> None:
    """341 cells have no path of non-`none` edges from input to output (e.g. all three edges into
    node 3 are `none`). The network's output then does not depend on the image: NB201 reports
    exactly chance accuracy for all 341 (10 % CIFAR-10, 1 % CIFAR-100, 0.83 % ImageNet16-120) and
    HW-NAS-Bench has no Edge TPU latency for them. They still build and run."""
    cut = [edges for edges in ALL_EDGES if not reaches_output(edges)]
    assert len(cut) == 341
    # node 1 gets nothing (zeros); node 3 = conv(node 1) + conv(node 2), node 2 = conv(node 1): a
    # constant that BN makes non-zero. A skip 1<-0 would connect it.
    edges = ("none", "none", "nor_conv_1x1", "none", "nor_conv_3x3", "nor_conv_3x3")
    assert not reaches_output(edges) and reaches_output(("skip_connect", *edges[1:]))
    model = build_model(space().spec_of_edges(edges)).eval()
    with torch.no_grad():
        a, b = model(torch.randn(1, 3, 32, 32)), model(torch.randn(1, 3, 32, 32) * 5)
    assert torch.equal(a, b)


@needs_table
def test_disconnected_cells_score_chance_in_the_data(table: list[dict[str, str]]) -> None:
    cut = {row["index"] for row in table if not reaches_output(parse_arch_string(row["arch"]))}
    assert len(cut) == 341
    assert {float(row["cifar10_test_acc"]) for row in table if row["index"] in cut} == {10.0}
    assert min(float(row["cifar10_test_acc"]) for row in table if row["index"] not in cut) > 10.0


# -- cost parity with NB201 -----------------------------------------------------------------------
def _cell_layer(edges: tuple[str, ...], channels: int, size: int) -> LayerShape:
    return LayerShape("cell", "block", channels, size, channels, size, BlockSpec(Op.CELL, channels, edges=edges))


@functools.cache
def _skeleton_cost(resolution: int, classes: int) -> tuple[int, int]:
    """A network with all-`none` cells has the skeleton's cost (such cells cost nothing)."""
    skeleton = space(resolution, classes).spec_of_edges(("none",) * 6)
    return macs_of_spec(skeleton, with_bias=True), params_of_spec(skeleton)


def _cost_by_cells(s: NB201Space, edges: tuple[str, ...]) -> tuple[int, int]:
    """(MACs incl. bias adds, params) as skeleton + 5 x each stage's cell, from the per-layer closed
    forms: one cell spec per stage instead of a 17-block network per row keeps 3 x 15,625 fast."""
    macs, params = _skeleton_cost(s.resolution, s.num_classes)
    for stage, channels in enumerate(CHANNELS):
        cell = _cell_layer(edges, channels, s.resolution >> stage)
        macs += CELLS_PER_STAGE * layer_macs(cell)
        params += CELLS_PER_STAGE * layer_params(cell)
    return macs, params


@pytest.mark.parametrize(("name", "resolution", "classes"), DATASETS)
def test_cost_by_cells_is_the_network_cost(name: str, resolution: int, classes: int) -> None:
    s = space(resolution, classes)
    for edges in ALL_EDGES[::157]:
        arch = s.spec_of_edges(edges)
        assert _cost_by_cells(s, edges) == (macs_of_spec(arch, with_bias=True), params_of_spec(arch))


@needs_table
@pytest.mark.parametrize(("name", "resolution", "classes"), DATASETS)
def test_params_and_flops_equal_nb201_on_every_cell(table: list[dict[str, str]], name: str, resolution: int,
                                                      classes: int) -> None:
    s = space(resolution, classes)
    flops_exact = params_exact = 0
    for row in table:
        macs, params = _cost_by_cells(s, parse_arch_string(row["arch"]))
        flops_exact += round(float(row[f"flops_{name}"]) * 1e6) == macs
        params_exact += round(float(row[f"params_{name}"]) * 1e6) == params
    assert (flops_exact, params_exact) == (15_625, 15_625)


@needs_table
def test_closed_form_equals_the_built_models(table: list[dict[str, str]]) -> None:
    """20 cells across the data sets: the closed forms equal the built module's parameter count and
    torch's FlopCounterMode (2 FLOPs per MAC of conv and linear), and the data's numbers."""
    rng = np.random.default_rng(201)
    for position, index in enumerate(rng.choice(len(table), 20, replace=False)):
        row = table[int(index)]
        name, resolution, classes = DATASETS[position % 3]
        arch = space(resolution, classes).from_arch_string(row["arch"])
        model = build_model(arch).eval()
        assert sum(p.numel() for p in model.parameters()) == params_of_spec(arch) == round(
            float(row[f"params_{name}"]) * 1e6)
        if position % 3 == 2:  # the counting pass at 16x16 is cheap; at 32x32 params suffice
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(torch.zeros(1, 3, resolution, resolution))
            assert counter.get_total_flops() == 2 * macs_of_spec(arch)
            assert macs_of_spec(arch) + classes == round(float(row[f"flops_{name}"]) * 1e6)
