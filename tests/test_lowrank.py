"""Low-rank factorization: the spec field, the built layers, their cost, and the decompositions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from compress.lowrank import factorize, svd_factors, tucker2_factors
from compress.lowrank_policy import RankPolicy, energy_policy, energy_rank, factorizable, latency_policy
from compress.policy import PolicyError
from nas.rundir.model_files import load, save
from predictors.cost import count, layer_macs, macs_of_spec, params_of_spec
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model
from search_spaces.build import LayerShape, layer_shapes, layer_signature
from search_spaces.lowrank_layers import SVDConv, SVDLinear, Tucker2Conv
from search_spaces.spec import SpecError


def tiny_spec(**head: object) -> ArchSpec:
    return ArchSpec(StemSpec(8), (BlockSpec(Op.MBCONV, 16, expand_ratio=4), BlockSpec(Op.RESBLOCK, 16, stride=2)),
                    HeadSpec(conv_channels=32, dropout=0.0, **head), resolution=8, num_classes=10)


def trained_like(spec: ArchSpec) -> nn.Module:
    """Random weights of a realistic scale everywhere (the default init leaves the classifier tiny)."""
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model.eval()


def test_ranks_stay_out_of_the_json_and_hash_when_empty() -> None:
    spec = tiny_spec()
    assert all("ranks" not in part for part in (spec.to_dict()["blocks"][0], spec.to_dict()["head"],
                                                spec.to_dict()["stem"]))
    lowrank = spec.replace(blocks=(replace(spec.blocks[0], ranks={"project": 4, "expand": 3}), spec.blocks[1]))
    assert lowrank.to_dict()["blocks"][0]["ranks"] == {"expand": 3, "project": 4}
    assert lowrank.content_hash() != spec.content_hash()
    assert ArchSpec.from_json(lowrank.to_json()) == lowrank


def test_block_string_and_latency_key_carry_the_ranks() -> None:
    block = BlockSpec(Op.RESBLOCK, 16, ranks={"conv_a": [4, 6], "conv_b": 8})
    assert block.to_string() == "rb_k3_c16_s1_relu_lr[conv_a=4x6,conv_b=8]"
    assert BlockSpec.from_string(block.to_string()) == block
    head = HeadSpec(ranks={"classifier": 5})
    assert "_lr[classifier=5]@" in layer_signature(head, 16, 4, 10)
    assert layer_signature(StemSpec(8, ranks={"0": 4}), 3, 8, 8) == "stem_k3_c8_s2_relu_lr[0=4]@3x8x8"


@pytest.mark.parametrize("ranks, message", [
    ({"expand": 0}, "blocks[0].ranks.expand=0 must be >= 1"),
    ({"expand": [1, 2, 3]}, "must be a rank (int) or [r_in, r_out]"),
])
def test_malformed_ranks_are_spec_errors(ranks: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ArchSpec.from_dict({**tiny_spec().to_dict(), "blocks": [{**tiny_spec().blocks[0].to_dict(), "ranks": ranks},
                                                                tiny_spec().blocks[1].to_dict()]})


def test_build_refuses_unknown_grouped_and_too_large_ranks() -> None:
    spec = tiny_spec()
    with pytest.raises(SpecError, match="blocks\\[0\\].ranks: no conv or linear 'nope'.*allowed: expand, project"):
        build_model(spec.replace(blocks=(replace(spec.blocks[0], ranks={"nope": 2}), spec.blocks[1])))
    with pytest.raises(SpecError, match="depthwise is a grouped conv"):
        build_model(spec.replace(blocks=(replace(spec.blocks[0], ranks={"depthwise": 2}), spec.blocks[1])))
    with pytest.raises(SpecError, match=r"head.ranks.classifier=11: rank must be <= 10 \(full rank\)"):
        build_model(tiny_spec(ranks={"classifier": 11}))


def lowrank_spec() -> ArchSpec:
    spec = tiny_spec(ranks={"conv": 5, "classifier": 3})
    return spec.replace(stem=replace(spec.stem, ranks={"0": 4}), blocks=(replace(spec.blocks[0], ranks={"expand": 3}),
                                replace(spec.blocks[1], ranks={"conv_a": [4, 6], "conv_b": 5})))


def test_the_spec_builds_the_low_rank_layers_and_counts_them_exactly() -> None:
    spec = lowrank_spec()
    model = build_model(spec)
    assert isinstance(model.blocks[0].expand[0], SVDConv)
    assert isinstance(model.blocks[1].conv_b[1], SVDConv) and isinstance(model.blocks[1].conv_a[1], Tucker2Conv)
    assert isinstance(model.head.classifier, SVDLinear) and isinstance(model.stem[0][0], SVDConv)
    traced = count(spec)
    assert macs_of_spec(spec) == traced.macs and params_of_spec(spec) == traced.params
    # by hand, 4x4 in, 2x2 out: conv_a 1x1 16->4 at 4x4, 3x3/2 4->6 and 1x1 6->16 at 2x2; conv_b 3x3 16->5
    # and 1x1 5->16 at 2x2; the stride-2 shortcut's 1x1 16->16 at 2x2
    conv_a, conv_b, shortcut = 16 * 4 * 16 + 4 * 6 * 9 * 4 + 6 * 16 * 4, 16 * 9 * 5 * 4 + 5 * 16 * 4, 16 * 16 * 4
    assert traced.layer("blocks.1").macs == conv_a + conv_b + shortcut == 6496
    assert count(tiny_spec()).layer("blocks.1").macs == 2 * 16 * 16 * 9 * 4 + shortcut == 19456


def test_full_rank_factorization_reproduces_the_network() -> None:
    spec = tiny_spec()
    model = trained_like(spec)
    layers, _ = factorizable(model)
    full = {"stem.0": (3, 8), "blocks.1.conv_a": (16, 16), "blocks.1.conv_b": (16,), "blocks.0.expand": (8,),
            "blocks.0.project": (16,), "head.conv": (16,), "head.classifier": (10,)}
    assert set(full) <= set(layers)
    factorized = factorize(model, RankPolicy(full)).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(factorized(x), model(x), atol=1e-5)


def test_truncated_svd_error_is_the_dropped_singular_values_squared() -> None:
    torch.manual_seed(0)
    weight = torch.randn(12, 5, 3, 3, dtype=torch.float64)
    first, second, s = svd_factors(weight, 4)
    approx = (second.reshape(12, 4) @ first.reshape(4, -1))
    error = (weight.reshape(12, -1) - approx).pow(2).sum()
    assert torch.allclose(error, s[4:].pow(2).sum(), rtol=1e-10)


def test_tucker2_at_full_ranks_is_exact() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    first, core, last = tucker2_factors(weight, 4, 6)
    rebuilt = torch.einsum("do,oihw,ic->dchw", last[:, :, 0, 0], core, first[:, :, 0, 0])
    assert torch.allclose(rebuilt, weight, atol=1e-10)


def test_energy_rank_is_the_smallest_rank_holding_the_share() -> None:
    squared = torch.tensor([5.0, 3.0, 1.0, 1.0], dtype=torch.float64)  # cumulative 0.5, 0.8, 0.9, 1.0
    assert [energy_rank(squared, e) for e in (0.5, 0.51, 0.8, 0.9, 1.0)] == [1, 2, 2, 3, 4]


def test_energy_policy_skips_layers_where_no_rank_saves_macs() -> None:
    model = trained_like(tiny_spec())
    policy, skipped = energy_policy(model, 1.0)
    assert policy.ranks == {}  # full rank never saves MACs
    assert skipped["blocks.0.depthwise"].startswith("is a grouped conv")
    assert skipped["head.classifier"] == "rank 10 (energy 1) saves no MACs"
    with pytest.raises(PolicyError, match=r"energy=1.5 must be in \(0, 1\]"):
        energy_policy(model, 1.5)


def test_policy_errors_name_the_layer() -> None:
    model = trained_like(tiny_spec())
    with pytest.raises(PolicyError, match="unknown layer 'blocks.0.nope'"):
        RankPolicy({"blocks.0.nope": (2,)}).validate(model)
    with pytest.raises(PolicyError, match=r"head.classifier=11 out of range; allowed: ranks in \[1, 10\]"):
        RankPolicy({"head.classifier": 11}).validate(model)


def test_latency_policy_cuts_until_the_budget_fits() -> None:
    model = trained_like(tiny_spec())

    def layer_ms(layer: LayerShape) -> float:  # a pretend table: 1 ms per 100k MACs
        return layer_macs(layer) / 1e5

    start = sum(layer_ms(layer) for layer in layer_shapes(model.spec))
    policy, report = latency_policy(model, 0.8 * start, layer_ms)
    assert report["predicted_ms_after"] <= 0.8 * start < report["predicted_ms_before"] == pytest.approx(start)
    assert policy.ranks and macs_of_spec(policy.apply(model.spec)) < macs_of_spec(model.spec)


def test_a_factorized_model_saves_and_loads(tmp_path) -> None:
    model = factorize(trained_like(tiny_spec()), RankPolicy({"blocks.1.conv_a": (4, 6), "head.conv": (5,)})).eval()
    save(model, model.spec, tmp_path / "m")
    loaded = load(tmp_path / "m").eval()
    x = torch.randn(1, 3, 8, 8)
    assert loaded.spec == model.spec and torch.equal(loaded(x), model(x))


def test_a_factorized_model_exports_to_onnx_with_the_same_output() -> None:
    import onnxruntime

    from predictors.latency.backends import export_onnx, fixed_input

    model = factorize(trained_like(tiny_spec()), RankPolicy({"blocks.1.conv_a": (4, 6), "head.classifier": (3,)}))
    x = fixed_input((1, 3, 8, 8))
    session = onnxruntime.InferenceSession(export_onnx(model.eval(), x), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(x).detach(), atol=1e-4)


def test_channel_pruning_refuses_a_low_rank_spec_instead_of_failing_on_weights() -> None:
    from compress.prune import PrunePolicy, prune

    spec = lowrank_spec()
    with pytest.raises(PolicyError, match=r"blocks\[0\], blocks\[1\], stem, head have low-rank layers"):
        prune(spec, PrunePolicy("l1", {"blocks.0": 0.5}), build_model(spec).state_dict())


def test_layer_weights_of_a_low_rank_layer_count_each_factor_once() -> None:
    from predictors.cost import layer_weights

    block = next(layer for layer in layer_shapes(lowrank_spec()) if layer.name == "blocks.1")
    # conv_a 16*4 + 4*6*9 + 6*16, conv_b 16*9*5 + 5*16, shortcut 16*16
    assert layer_weights(block) == 64 + 216 + 96 + 720 + 80 + 256
