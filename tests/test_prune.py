"""Channel pruning: physically smaller models whose specs build exactly them, exact index
bookkeeping (ratio 0 and all-zero channels leave outputs unchanged), the criteria, policy files
and errors, and the budgeted ratio search."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress import PolicyError, PrunePolicy, channel_scores, plan_prune, prunable_units, prune, prune_model
from compress.prune import pruned_width, select_channels
from compress.prune_graph import analyse
from compress.prune_search import search_prune_policy
from predictors.cost import count, macs_of_spec, params_of_spec
from search_spaces import zoo
from search_spaces.blocks import se_squeeze_channels
from search_spaces.build import Network, build_model
from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec

torch.set_num_threads(1)


def mixed_spec() -> ArchSpec:
    """Every block type and every kind of unit: a residual group with an identity-expand member,
    Ghost modules of odd width (inner 21, output group 23 with a residual Ghost member and a
    shortcut conv), a DSConv producer, a stride-2 ShuffleNet consumer, SE and a two-layer head."""
    blocks = [
        BlockSpec(Op.MBCONV, 16, 1, 3, 6.0),  # residual member of group 'stem'
        BlockSpec(Op.MBCONV, 16, 1, 3, 1.0),  # residual, no expand conv: depthwise on the group
        BlockSpec(Op.GHOST, 23, 2, 3, mid_channels=21),  # odd inner and output widths
        BlockSpec(Op.GHOST, 23, 1, 3, mid_channels=40),  # residual Ghost member of 'blocks.2.out'
        BlockSpec(Op.DSCONV, 32, 1, 3),
        BlockSpec(Op.MBCONV, 40, 1, 5, 3.0),
        BlockSpec(Op.SHUFFLE, 48, 2, 3),  # reads 'blocks.5.out' with both branches
        BlockSpec(Op.MBCONV, 40, 1, 3, 4.0, se_ratio=0.25, activation="hswish"),  # SE, input never pruned
    ]
    return ArchSpec(StemSpec(16), tuple(blocks), HeadSpec(64, 32, dropout=0.0), resolution=16, num_classes=4)


def randomised(spec: ArchSpec, seed: int = 0, dtype: torch.dtype = torch.float32) -> Network:
    """An eval-mode model with random BN scales and variances. BN means and shifts are zero so a
    channel whose writer is zero stays exactly zero through every later BN and activation."""
    torch.manual_seed(seed)
    model = build_model(spec).to(dtype).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def mobilenet_v2() -> Network:
    return randomised(zoo.get("mobilenet_v2", 32, 10))


def test_mobilenet_v2_half_pruned_is_a_smaller_valid_model(mobilenet_v2: Network) -> None:
    spec = mobilenet_v2.spec
    policy = PrunePolicy.uniform(spec, 0.5, "l1")
    assert len(policy.ratios) == 24  # 16 inner widths + 8 output groups
    pruned_spec, state = prune(mobilenet_v2, policy)
    # inner widths halve (multiples of 8); an explicit mid appears where the input changed too
    assert [b.mid(i) for b, i in zip(pruned_spec.blocks[1:4], (8, 16, 16))] == [48, 72, 72]
    assert pruned_spec.blocks[2].mid_channels == 72 and pruned_spec.blocks[16].mid(80) == 480
    # output groups: 32 -> 24, not 16: a 16-wide stem would give blocks.0 (16 -> 16, stride 1) a shortcut
    assert pruned_spec.stem.out_channels == 24
    assert [b.out_channels for b in pruned_spec.blocks] == [8, 16, 16, 16, 16, 16] + [32] * 4 + [48] * 3 + [80] * 3 + [160]
    model = build_model(pruned_spec).eval()
    model.load_state_dict(state, strict=True)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    before, after = count(spec), count(pruned_spec)
    assert (before.params, before.macs) == (2_236_682, 6_124_928)
    assert (after.params, after.macs) == (698_714, 1_961_920)
    assert macs_of_spec(pruned_spec) == after.macs
    inner_only = prune(mobilenet_v2, PrunePolicy.uniform(spec, 0.5, "l1", kinds=("inner",)))[0]
    assert (count(inner_only).params, macs_of_spec(inner_only)) == (1_333_226, 3_486_656)


def test_ratio_zero_reproduces_outputs_exactly(mobilenet_v2: Network) -> None:
    x = torch.randn(2, 3, 32, 32)
    for model in (mobilenet_v2, randomised(mixed_spec())):
        pruned = prune_model(model, PrunePolicy.uniform(model.spec, 0.0, "fpgm"))
        assert pruned.spec == model.spec and not pruned.training
        assert torch.equal(pruned(x[..., : model.spec.resolution, : model.spec.resolution]),
                           model(x[..., : model.spec.resolution, : model.spec.resolution]))


@pytest.mark.parametrize("criterion", ["l1", "bn"])
def test_pruning_all_zero_channels_changes_nothing(criterion: str) -> None:
    """Zero the writers of a random choice of channels in every unit (Ghost: whole pairs, and the
    lone odd primary, which a pruned width never keeps), prune exactly that many: the outputs
    must be those of the unpruned model to float64 rounding. Any index slip shows up."""
    spec = mixed_spec()
    model = randomised(spec, dtype=torch.float64)
    policy = PrunePolicy.uniform(spec, 0.5, criterion, round_to=2)
    plan = plan_prune(spec, policy)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(1)
    for name, (old, new) in plan.widths.items():
        unit = plan.units[name]
        groups = unit.channel_groups(paired_only=unit.ghost_primary is not None)
        keep = set(torch.randperm(len(groups), generator=generator)[: new // len(groups[0])].tolist())
        kept = {c for g in keep for c in groups[g]}
        for writer in unit.writers:
            for channel in set(range(old)) - kept:
                if 0 <= channel - writer.offset < writer.count:
                    state[f"{writer.prefix}.0.weight"][channel - writer.offset] = 0
                    state[f"{writer.prefix}.1.weight"][channel - writer.offset] = 0
    model.load_state_dict(state)
    pruned = prune_model(model, policy).eval()
    assert plan.widths == {
        "blocks.0": (96, 48), "blocks.2": (21, 10), "blocks.3": (40, 20), "blocks.5": (96, 48),
        "blocks.6": (24, 12), "blocks.7": (192, 96), "stem": (16, 8), "blocks.2.out": (23, 12),
        "blocks.4.out": (32, 16), "blocks.5.out": (40, 20), "blocks.7.out": (40, 20),
    }
    assert count(pruned).params < count(model).params
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    assert (pruned(x) - model(x)).abs().max().item() < 1e-12


def test_criteria_pick_the_expected_filters() -> None:
    # five 1x1 filters on a line at 0, 1, 5, 6, 20 (second input weight 0)
    weight = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [5.0, 0.0], [-6.0, 0.0], [20.0, 0.0]]).view(5, 2, 1, 1)
    weight[1, 0], weight[3, 0] = 1.0, 6.0  # FPGM on the line: distances below; L1 ignores the sign
    gamma = torch.tensor([0.1, -2.0, 0.5, 0.05, -1.0])
    # L1 norms 0, 1, 5, 6, 20: the three largest
    assert select_channels(channel_scores("l1", weight), 3).tolist() == [2, 3, 4]
    # |gamma| 0.1, 2, 0.5, 0.05, 1
    assert select_channels(channel_scores("bn", weight, gamma), 3).tolist() == [1, 2, 4]
    # summed distances 32, 29, 25, 26, 68: 5 and 6 sit nearest the geometric median, pruned first
    assert channel_scores("fpgm", weight).tolist() == [32.0, 29.0, 25.0, 26.0, 68.0]
    assert select_channels(channel_scores("fpgm", weight), 3).tolist() == [0, 1, 4]
    # ties keep the lower index
    assert select_channels(torch.tensor([1.0, 2.0, 1.0, 1.0]), 2).tolist() == [0, 1]


def test_prune_moves_the_chosen_filters_and_their_readers() -> None:
    spec = ArchSpec(StemSpec(8), (BlockSpec(Op.MBCONV, 8, 1, 3, 4.0, se_ratio=0.25),), HeadSpec(16, dropout=0.0),
                    resolution=8, num_classes=2)
    state = randomised(spec).state_dict()
    norms = torch.randperm(32, generator=torch.Generator().manual_seed(3)).double() + 1
    state["blocks.0.expand.0.weight"] = (norms / 8).view(32, 1, 1, 1).expand(32, 8, 1, 1).float().clone()
    pruned_spec, pruned = prune(spec, PrunePolicy("l1", {"blocks.0": 0.5}), state)
    kept = torch.argsort(norms, descending=True)[:16].sort().values
    assert pruned_spec.blocks[0].mid(8) == 16 and kept.tolist() == sorted(kept.tolist())
    for key, dim in (("expand.0.weight", 0), ("expand.1.bias", 0), ("depthwise.0.weight", 0),
                     ("depthwise.1.running_var", 0), ("se.reduce.weight", 1), ("se.expand.weight", 0),
                     ("se.expand.bias", 0), ("project.0.weight", 1)):
        assert torch.equal(pruned[f"blocks.0.{key}"], state[f"blocks.0.{key}"].index_select(dim, kept)), key
    assert torch.equal(pruned["blocks.0.project.0.weight"].sum(), state["blocks.0.project.0.weight"][:, kept].sum())


def test_widths_that_would_change_the_structure_are_avoided() -> None:
    # 16 * 0.5 = 8 equals the block's input width: the builder would drop the expand conv, so the
    # unit keeps the next multiple up, here its full width
    spec = ArchSpec(StemSpec(8), (BlockSpec(Op.MBCONV, 8, 1, 3, 2.0),), HeadSpec(16, dropout=0.0),
                    resolution=8, num_classes=2)
    plan = plan_prune(spec, PrunePolicy("l1", {"blocks.0": 0.5, "stem": 0.5}))
    assert plan.widths == {"stem": (8, 8), "blocks.0": (16, 16)}  # stem 8 -> 8: never below round_to
    v2 = zoo.get("mobilenet_v2", 32, 10)
    # blocks.1.out (24) at 0.5 -> 16 is fine; blocks.0.out 16 -> 8; stem 32 -> 16 would equal the
    # width of blocks.0's output (16) and give that stride-1 block a shortcut: 24 instead
    assert plan_prune(v2, PrunePolicy("l1", {"stem": 0.5})).widths["stem"] == (32, 24)


def test_width_rounding_rules() -> None:
    assert pruned_width(96, 0.5) == 48
    assert pruned_width(144, 0.5) == 72
    assert pruned_width(96, 0.9) == 8  # never below round_to
    assert pruned_width(6, 0.5) == 6  # never below the original when it is under round_to
    assert pruned_width(96, 0.0) == 96
    assert pruned_width(96, 0.5, forbidden={48}) == 56  # the nearest allowed, wider first
    assert pruned_width(23, 0.5, 2, even=True) == 12


def test_se_squeeze_follows_the_pruned_spec() -> None:
    spec = zoo.get("efficientnet_b0", 32, 10)
    pruned_spec, state = prune(randomised(spec), PrunePolicy.uniform(spec, 0.5, "bn"))
    block, block_in = pruned_spec.blocks[1], pruned_spec.blocks[0].out_channels
    squeeze = se_squeeze_channels(block.se_style, block.se_ratio, block_in, block.mid(block_in))
    assert state["blocks.1.se.reduce.weight"].shape[:2] == (squeeze, block.mid(block_in)) == (2, 48)


PRUNE_REFUSED = {"squeezenet1_0", "squeezenet1_1"}  # fire modules: refused with a clear error (below)


@pytest.mark.parametrize("index,name", [(index, name) for index, name in enumerate(zoo.names())
                                        if name not in PRUNE_REFUSED])
def test_every_zoo_model_prunes_builds_and_shrinks(index: int, name: str) -> None:
    spec = zoo.get(name, 32, 10)
    model = randomised(spec)
    pruned = prune_model(model, PrunePolicy.uniform(spec, 0.5, ("l1", "bn", "fpgm")[index % 3]))
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert count(pruned).params < count(model).params
    assert macs_of_spec(pruned.spec) < macs_of_spec(spec)


@pytest.mark.parametrize("name", sorted(PRUNE_REFUSED))
def test_fire_modules_are_refused_by_name(name: str) -> None:
    spec = zoo.get(name, 32, 10)
    with pytest.raises(PolicyError, match=r"blocks\.0 \(fire_k3_m16_c128_s2_relu\) is a fire module; .*'fire'"):
        PrunePolicy.uniform(spec, 0.5)
    with pytest.raises(PolicyError, match="does not support op 'fire'"):
        plan_prune(spec, PrunePolicy(ratios={"stem": 0.5}))


def test_policy_json_round_trip(tmp_path) -> None:
    policy = PrunePolicy("fpgm", {"blocks.10": 0.25, "blocks.2": 0.5, "stem": 0}, round_to=4)
    data = json.loads(policy.to_json())
    assert data == {
        "schema": "hwnas-compress-policy", "schema_version": 1, "kind": "prune",
        "settings": {"criterion": "fpgm", "round_to": 4},
        "layers": {"blocks.2": 0.5, "blocks.10": 0.25, "stem": 0.0},
    }
    assert PrunePolicy.from_json(policy.to_json()) == policy
    policy.save(tmp_path / "prune.json")
    assert PrunePolicy.load(tmp_path / "prune.json") == policy
    quantize = dict(data, kind="quantize")
    with pytest.raises(PolicyError, match="kind='quantize', expected 'prune'"):
        PrunePolicy.from_dict(quantize)


def test_bad_policies_name_the_layer_and_what_is_allowed() -> None:
    spec = zoo.get("mobilenet_v2", 32, 10)
    with pytest.raises(PolicyError, match=r"blocks\.3=0\.95 out of range; allowed: \[0\.0, 0\.9\]"):
        PrunePolicy("l1", {"blocks.3": 0.95})
    with pytest.raises(PolicyError, match=r"criterion='l2' not in \{l1, bn, fpgm\}"):
        PrunePolicy("l2", {})
    with pytest.raises(PolicyError, match=r"unknown layer 'blocks\.99'; layers that accept it: stem, blocks\.0\.out, blocks\.1, "):
        prune(spec, PrunePolicy("l1", {"blocks.99": 0.5}), build_model(spec).state_dict())
    with pytest.raises(PolicyError, match=r"layer 'blocks\.0' \(mbconv without expand conv\)"):
        plan_prune(spec, PrunePolicy("l1", {"blocks.0": 0.5}))
    with pytest.raises(PolicyError, match=r"'blocks\.2\.out' is tied by residual adds to 'blocks\.1\.out'.*"
                                          r"set the ratio on 'blocks\.1\.out'"):
        plan_prune(spec, PrunePolicy("l1", {"blocks.2.out": 0.5}))
    shuffle = zoo.get("shufflenet_v2_x1_0", 32, 10)
    with pytest.raises(PolicyError, match=r"'blocks\.0\.out' is split in half and shuffled by the stride-1 "
                                          r"ShuffleNetV2 unit blocks\.1"):
        plan_prune(shuffle, PrunePolicy("l1", {"blocks.0.out": 0.5}))
    assert "stem" in prunable_units(shuffle) and "blocks.0" in prunable_units(shuffle)
    with pytest.raises(ValueError, match="state_dict does not fit the spec"):
        prune(spec, PrunePolicy("l1", {}), build_model(mixed_spec()).state_dict())


def test_units_of_the_mixed_spec() -> None:
    units, reasons = analyse(mixed_spec())
    assert sorted(units) == sorted(prunable_units(mixed_spec()))
    group = units["blocks.2.out"]
    assert (group.width, group.ghost_primary, group.members, group.consumer) == (23, 12, (3,), 4)
    assert [w.prefix for w in group.writers] == [
        "blocks.2.project.primary", "blocks.2.project.cheap", "blocks.2.shortcut.1",
        "blocks.3.project.primary", "blocks.3.project.cheap",
    ]
    assert units["stem"].members == (0, 1) and units["blocks.5.out"].consumer == 6
    assert "ShuffleNetV2 unit" in reasons["blocks.6.out"] and "dsconv" in reasons["blocks.4"]


def test_ratio_search_meets_a_macs_budget() -> None:
    spec = ArchSpec(StemSpec(16), tuple(BlockSpec(Op.MBCONV, c, s, 3, 4.0) for c, s in ((16, 2), (16, 1), (24, 2), (24, 1))),
                    HeadSpec(64, dropout=0.0), resolution=16, num_classes=4)
    model = randomised(spec)
    images = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        labels = model(images).argmax(1)

    def agreement(pruned_spec: ArchSpec, state: dict) -> float:  # AMC's reward: accuracy, no fine-tune
        pruned = build_model(pruned_spec).eval()
        pruned.load_state_dict(state, strict=True)
        with torch.no_grad():
            return (pruned(images).argmax(1) == labels).float().mean().item()

    budget = macs_of_spec(spec) // 2
    policy, report = search_prune_policy(spec, model.state_dict(), agreement, budget_macs=budget, trials=8, seed=0)
    assert macs_of_spec(spec) == 213_888 and budget == 106_944
    assert len(report.trials) == 8 and all(trial["macs"] <= budget for trial in report.trials)
    assert report.best_macs <= budget and report.best_reward == max(t["reward"] for t in report.trials)
    assert set(report.best_ratios) == set(prunable_units(spec)) and policy.ratios == report.best_ratios
    assert macs_of_spec(plan_prune(spec, policy).spec) == report.best_macs
    first = report.trials[0]["ratios"]  # the smallest uniform ratio that fits
    assert len(set(first.values())) == 1
    again = search_prune_policy(spec, model.state_dict(), agreement, budget_macs=budget, trials=8, seed=0)[1]
    assert again.trials == report.trials  # seeded
    # a latency budget through a predictor (spec in, spec out): here a stand-in, ms = MACs / 1e5
    _, timed = search_prune_policy(spec, model.state_dict(), agreement, budget_ms=1.2,
                                   latency=lambda s: macs_of_spec(s) / 1e5, trials=3, seed=1)
    assert all(trial["latency_ms"] <= 1.2 for trial in timed.trials)
    with pytest.raises(ValueError, match="budget unreachable"):
        search_prune_policy(spec, model.state_dict(), agreement, budget_macs=1000, trials=2)


# ---- grouped 1x1 convs and channel shuffles: FBNet's irf/pw blocks, ShuffleNet V1 units (issue #17) ----


def fbnet_like_spec() -> ArchSpec:
    """FBNet's blocks: a `_g2` irf as a residual member of the stem group, a pw producer, a plain
    irf member, a strided `_g2` irf reading that group through its grouped expand, and a residual
    `_g2` irf with SE on the shuffled inner tensor (MobileNetV3's rounding keeps its squeeze at 8
    after pruning, so the test stays exact: narrowing a squeeze is lossy)."""
    blocks = [
        BlockSpec(Op.IRF, 16, 1, 3, 1.0, groups=2),
        BlockSpec(Op.PW, 24, 2, 1),
        BlockSpec(Op.IRF, 24, 1, 3, 3.0),
        BlockSpec(Op.IRF, 32, 2, 5, 1.0, groups=2),
        BlockSpec(Op.IRF, 32, 1, 3, 1.0, se_ratio=0.25, se_style="mobilenetv3", groups=2),
    ]
    return ArchSpec(StemSpec(16), tuple(blocks), HeadSpec(48, dropout=0.0), resolution=16, num_classes=4)


def shufflenet_v1_like_spec() -> ArchSpec:
    """ShuffleNet V1 units (g=3): a stride-2 unit whose first 1x1 is dense (input 8 < bottleneck
    18), a pw producer and two stride-1 units adding into its group, a head without conv."""
    blocks = [
        BlockSpec(Op.SHUFFLE_V1, 32, 2, 3, mid_channels=18, groups=3),
        BlockSpec(Op.PW, 48, 1, 1),
        BlockSpec(Op.SHUFFLE_V1, 48, 1, 3, groups=3),
        BlockSpec(Op.SHUFFLE_V1, 48, 1, 3, groups=3),
    ]
    return ArchSpec(StemSpec(8), tuple(blocks), HeadSpec(None, dropout=0.0), resolution=16, num_classes=4)


def zero_unchosen_channels(model: Network, policy: PrunePolicy, seed: int) -> None:
    """Zero the writers (filter and BN gamma) of every channel a random, valid choice removes."""
    from compress.prune_grouped import choose_in_cells

    plan = plan_prune(model.spec, policy)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    for name, (old, new) in plan.widths.items():
        unit = plan.units[name]
        scores = torch.rand(old, generator=generator, dtype=torch.float64)
        kept = set(choose_in_cells(scores, new, unit.partitions, unit.shuffle, select_channels).tolist())
        for writer in unit.writers:
            for channel in set(range(old)) - kept:
                state[f"{writer.prefix}.0.weight"][channel - writer.offset] = 0
                state[f"{writer.prefix}.1.weight"][channel - writer.offset] = 0
    model.load_state_dict(state)


@pytest.mark.parametrize("make,criterion,widths", [
    (fbnet_like_spec, "l1", {"blocks.0": (16, 8), "blocks.2": (72, 36), "blocks.3": (24, 12), "blocks.4": (32, 16),
                             "stem": (16, 8), "blocks.1.out": (24, 12), "blocks.3.out": (32, 16)}),
    # the strided unit's bottleneck 18 -> 12, not 6 (round_to 2 and groups 3: multiples of 6): a
    # bottleneck of 6 is narrower than its input (8), so the builder would group its first 1x1
    (shufflenet_v1_like_spec, "bn", {"blocks.0": (18, 12), "blocks.2": (12, 6), "blocks.3": (12, 6),
                                     "blocks.1.out": (48, 24)}),
])
def test_grouped_blocks_prune_exactly(make, criterion: str, widths: dict) -> None:
    """Half of every unit of irf/pw/shufflev1 blocks, with the removed channels zeroed first: the
    pruned model computes the same function, and its spec's closed-form size is the model's."""
    spec = make()
    model = randomised(spec, dtype=torch.float64)
    policy = PrunePolicy.uniform(spec, 0.5, criterion, round_to=2)
    assert plan_prune(spec, policy).widths == widths
    zero_unchosen_channels(model, policy, seed=2)
    pruned = prune_model(model, policy).eval()
    assert sum(p.numel() for p in pruned.parameters()) == params_of_spec(pruned.spec) < params_of_spec(spec)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    assert (pruned(x) - model(x)).abs().max().item() < 1e-12


def test_grouped_units_go_by_cells_through_the_shuffle() -> None:
    """An irf `_g2` inner tensor of 8: expand groups {0..3}, {4..7}; the shuffle sends E channel
    i*4+j to S position 2j+i, so the project's halves read E {0,1,4,5} and {2,3,6,7}: four cells
    of two. Keeping 4 keeps the best of each cell, and the depthwise conv keeps S in pruned order."""
    from compress.prune_grouped import cell_of_channels, choose_in_cells, infeasible_widths, shuffled_index

    assert cell_of_channels(8, (), 2) == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    scores = torch.tensor([5.0, 1.0, 1.0, 5.0, 9.0, 8.0, 7.0, 0.0])
    kept = choose_in_cells(scores, 4, (), 2, select_channels)
    assert kept.tolist() == [0, 3, 4, 6]
    # pruned E = [0, 3 | 4, 6]; shuffled: [E0, E4, E3, E6] = original S positions 0, 1, 6, 5
    assert shuffled_index(kept, 8, 2).tolist() == [0, 1, 6, 5]
    # ShuffleNet V1's bottleneck of 60 in 3 groups: cells of 6 or 7; widths are multiples of 3
    assert sorted(infeasible_widths(60, 3, (), 3)) == [57]  # one cell of 6 would need 7
    assert infeasible_widths(8, 2, (), 2) == set()  # width 6 keeps 2, 1, 1, 2 of the cells' 2
    assert cell_of_channels(10, (2,), 1) is not None and cell_of_channels(9, (2,)) is None


def test_shufflenet_v1_concats_are_refused_with_the_reason() -> None:
    spec = shufflenet_v1_like_spec()
    with pytest.raises(PolicyError, match=r"'stem'.*avg-pooled into the output of the stride-2 ShuffleNet V1 "
                                          r"unit blocks\.0"):
        plan_prune(spec, PrunePolicy("l1", {"stem": 0.5}))
    with pytest.raises(PolicyError, match=r"'blocks\.0\.out'.*concat of the avg-pooled input and the conv branch"):
        plan_prune(spec, PrunePolicy("l1", {"blocks.0.out": 0.5}))
    zoo_spec = zoo.get("shufflenet_v1_g3", 32, 10)
    assert sorted(prunable_units(zoo_spec)) == sorted(f"blocks.{i}" for i in range(16))  # bottlenecks only
    plan = plan_prune(zoo_spec, PrunePolicy.uniform(zoo_spec, 0.5))
    # multiples of 24 (round_to 8, 3 groups); blocks.0 reads the 24-wide stem with a dense 1x1
    # (bottleneck 60 > 24), so its bottleneck stays wider than 24: 48
    assert [plan.widths[f"blocks.{i}"] for i in (0, 1, 4, 12)] == [(60, 48), (60, 24), (120, 72), (240, 120)]
    with pytest.raises(PolicyError, match=r"'blocks\.1' \(pw\) has no inner width"):
        plan_prune(spec, PrunePolicy("l1", {"blocks.1": 0.5}))
