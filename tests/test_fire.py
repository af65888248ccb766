"""SqueezeNet's fire module as a block kind, the spec fields SqueezeNet needs (an unpadded stem
without batch norm, a conv classifier head), and the seed networks of `search_spaces/zoo_seeds.py`
(SqueezeNet 1.0 / 1.1, MobileNet V1) against torchvision and the papers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from compress.quantize import QuantConv2d, apply_policy, calibrate, quant_layers
from compress.quantize_export import check_qdq_export, export_qdq
from compress.quantize_policy import QuantPolicy
from compress.scale import scale_spec
from predictors.cost import count, layer_params, macs_of_spec, params_of_spec
from predictors.latency.builder import LocalMeasurer, MeasureSettings, build_table
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, SpecError, StemSpec, build_model, layer_shapes, zoo
from search_spaces.build import LayerShape, build_layer, layer_signatures
from search_spaces.spaces import get_space

FAST = MeasureSettings(warmup=1, blocks=3, block_runs=2, retries=0)


def tiny_squeezenet(kernel: int = 3) -> ArchSpec:
    """Stem 3x3/16 unpadded, a fire module, a pooling fire module, the conv classifier."""
    blocks = (BlockSpec(Op.FIRE, 32, mid_channels=8, kernel=kernel),
              BlockSpec(Op.FIRE, 48, stride=2, expand_ratio=0.25))
    return ArchSpec(StemSpec(16, kernel=3, stride=2, padding=0, batch_norm=False), blocks,
                    HeadSpec(None, dropout=0.5, classifier="conv"), resolution=33, num_classes=10)


def test_fire_module_is_squeeze_then_two_expands_concatenated() -> None:
    block = BlockSpec(Op.FIRE, 128, stride=2, mid_channels=16)
    assert block.to_string() == "fire_k3_m16_c128_s2_relu"
    assert BlockSpec.from_string("fire_k3_m16_c128_s2_relu") == block
    module = build_model(ArchSpec(StemSpec(96), (block,), HeadSpec(None), resolution=108)).blocks[0]
    # squeeze 96->16 (1x1), expand 16->64 (1x1) and 16->64 (3x3), all with biases, no batch norm
    assert [tuple(p.shape) for p in module.parameters()] == [(16, 96, 1, 1), (16,), (64, 16, 1, 1), (64,),
                                                            (64, 16, 3, 3), (64,)]
    # stride 2 is SqueezeNet's 3x3/s2 max-pool in ceil mode before the module: 54 -> 27, 27 -> 13
    assert module(torch.randn(1, 96, 54, 54)).shape == (1, 128, 27, 27)
    assert module(torch.randn(1, 96, 27, 27)).shape == (1, 128, 13, 13)


def test_fire_spec_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"blocks\[1\]\.se_ratio=0.25 must be 0.0 for op 'fire'"):
        ArchSpec.from_dict({**tiny_squeezenet().to_dict(), "blocks": [
            {"op": "fire", "out_channels": 32}, {"op": "fire", "out_channels": 32, "se_ratio": 0.25}]})
    with pytest.raises(SpecError, match=r"block\.out_channels=1 must be >= 2"):
        BlockSpec(Op.FIRE, 1)
    with pytest.raises(SpecError, match=r"stem\.padding=2 not in \{0, 1\}"):
        StemSpec(16, kernel=3, padding=2)
    with pytest.raises(SpecError, match=r"head\.conv_channels=1280 must be None with classifier 'conv'"):
        HeadSpec(1280, classifier="conv")
    with pytest.raises(SpecError, match=r"head\.classifier='svm' not in \{linear, conv\}"):
        HeadSpec(None, classifier="svm")
    with pytest.raises(SpecError, match=r"blocks\[1\]: a stride-2 'fire' module .* at least 3x3, got 2x2"):
        tiny_squeezenet().replace(stem=StemSpec(16, kernel=7, padding=0, batch_norm=False), resolution=9)


def test_new_fields_at_their_defaults_leave_old_json_and_hashes_alone() -> None:
    assert set(StemSpec().to_dict()) == {"out_channels", "kernel", "stride", "activation", "pool"}
    assert "classifier" not in HeadSpec().to_dict()
    assert zoo.get("mobilenet_v2").content_hash() == "858358964e3a8005"  # as before these fields existed
    spec = tiny_squeezenet()
    assert spec.to_dict()["stem"]["padding"] == 0 and spec.to_dict()["stem"]["batch_norm"] is False
    assert spec.to_dict()["head"]["classifier"] == "conv"
    assert ArchSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("kernel", [3, 5])
def test_closed_form_equals_fvcore_and_the_built_model(kernel: int) -> None:
    spec = tiny_squeezenet(kernel)
    traced = count(spec)
    assert (params_of_spec(spec), macs_of_spec(spec)) == (traced.params, traced.macs)
    for layer in layer_shapes(spec):
        assert layer_params(layer) == traced.layer(layer.name).params
    # 33 -> 16 (unpadded 3x3/s2 stem) -> 16 -> 8 (pooling fire): the classifier conv runs on 8x8
    assert [(layer.in_size, layer.out_size) for layer in layer_shapes(spec)] == [(33, 16), (16, 16), (16, 8), (8, 1)]
    assert traced.layer("head").macs == 8 * 8 * 48 * 10


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_is_torchvisions_layer_for_layer(name: str) -> None:
    ours, reference = build_model(zoo.get(name, 64)).eval(), getattr(torchvision.models, name)().eval()
    assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
    # torchvision's (random) weights loaded in order give the same outputs: the same network
    ours.load_state_dict(dict(zip(ours.state_dict(), reference.state_dict().values())))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


# Howard et al. 2017, Table 6 (width, 224 px) and Table 7 (1.0, resolution): (M mult-adds, M params)
MOBILENET_V1_TABLES = {(1.0, 224): (569, 4.2), (0.75, 224): (325, 2.6), (0.5, 224): (149, 1.3),
                       (0.25, 224): (41, 0.5), (1.0, 192): (418, 4.2), (1.0, 160): (290, 4.2), (1.0, 128): (186, 4.2)}


@pytest.mark.parametrize(("width", "resolution"), list(MOBILENET_V1_TABLES))
def test_mobilenet_v1_width_and_resolution_multipliers_match_the_paper(width: float, resolution: int) -> None:
    spec = scale_spec(zoo.get("mobilenet_v1"), width, resolution=resolution)
    macs, params = MOBILENET_V1_TABLES[(width, resolution)]
    assert abs(macs_of_spec(spec) / (macs * 1e6) - 1) < 0.01
    assert round(params_of_spec(spec) / 1e6, 1) == params  # the paper prints 0.1M


def test_squeezenet_scales_in_width() -> None:
    spec = scale_spec(zoo.get("squeezenet1_1", 64, 10), 0.5)
    assert (spec.stem.out_channels, spec.blocks[0].mid_channels, spec.blocks[0].out_channels) == (32, 8, 64)
    assert build_model(spec)(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1", "mobilenet_v1"])
def test_exports_to_onnx_and_measures(name: str) -> None:
    spec = zoo.get(name, 48, 10)
    measurer = LocalMeasurer("onnxruntime", threads=1, settings=FAST)
    (whole,) = measurer.measure_archs([spec])
    assert whole.median_ms > 0
    # the latency table's per-layer path: every layer rebuilt from its JSON signature, then timed
    layers = [LayerShape.from_dict(layer.to_dict()) for layer in layer_shapes(spec)[:3]]
    assert [layer.signature for layer in layers] == [layer.signature for layer in layer_shapes(spec)[:3]]
    assert all(m.median_ms > 0 for m in measurer.measure_layers(layers))


def test_stem_and_head_signatures_name_the_new_fields() -> None:
    stem, *_, head = layer_shapes(zoo.get("squeezenet1_1"))
    assert stem.signature == "stem_k3_c64_s2_p0_nobn_relu@3x224x224"
    assert head.signature == "head_convclassifier_relu_classes1000@512x13x13"
    assert layer_shapes(zoo.get("mobilenet_v1"))[0].signature == "stem_k3_c32_s2_relu@3x224x224"
    assert build_layer(stem)(torch.randn(1, 3, 224, 224)).shape == (1, 64, 111, 111)


def test_fire_modules_quantize_and_export_as_int8() -> None:
    model = build_model(tiny_squeezenet()).eval()
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    qmodel = apply_policy(model, QuantPolicy({name: (8, 8) for name in names}))
    assert set(quant_layers(qmodel)) == set(names)  # stem, 3 convs per fire module, classifier conv
    assert len(names) == 8 and isinstance(qmodel.get_submodule("blocks.1.expand3x3.0"), QuantConv2d)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 33, 33, generator=generator) for _ in range(2)]
    calibrate(qmodel, batches)
    onnx_bytes = export_qdq(qmodel, (1, 3, 33, 33), check_inputs=torch.cat(batches))
    check = check_qdq_export(qmodel, onnx_bytes, torch.cat(batches))
    assert check.passed and check.quantization_error > 0


def test_mnasnet_space_offers_fire_only_when_asked() -> None:
    default = get_space("mnasnet")
    assert default.size() == 3_965_410_130_118_750_000 and len(default.candidate_ops()) == 4053  # as before fire
    with pytest.raises(SpecError, match=r"mnasnet: ops \['conv'\] not in \{mbconv, shuffle, ghost, dsconv, fire\}"):
        get_space("mnasnet", ops=["conv"])
    space = get_space("mnasnet", 32, 10, ops=["mbconv", "fire"])
    keys = {layer.signature for layer in space.candidate_ops()}
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(6)]
    fires = [block for arch in archs for block in arch.blocks if block.op is Op.FIRE]
    assert fires and all(block.expand_ratio == 0.125 and not block.se_ratio for block in fires)
    for arch in archs:
        assert space.decode(space.encode(arch)) == arch
        assert {key for _, key in layer_signatures(arch)} <= keys  # a table of the space covers it
    assert build_model(archs[0])(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_fire_space_refuses_odd_strided_maps() -> None:
    with pytest.raises(SpecError, match=r"op 'fire' at resolution 200: stage4 strides an odd 25x25 map"):
        get_space("mnasnet", 200, ops=["mbconv", "fire"])


def test_latency_table_of_a_fire_space_predicts_its_networks(tmp_path) -> None:
    # one network: fire modules only, each stage at its base width, kernel and depth
    space = get_space("mnasnet", 32, 10, ops=["fire"], kernels=[3], expand_ratios=[1], se_ratios=[0],
                      layer_deltas=[0], width_multipliers=[1.0])
    assert space.size() == 1 and len(space.candidate_ops()) == 14  # stem, 7 first + 5 repeated blocks, head
    table = build_table(space, LocalMeasurer("onnxruntime", threads=1, settings=FAST), tmp_path / "fire.json")
    arch = space.sample(np.random.default_rng(0))
    assert arch.blocks[0].to_string() == "fire_k3_e0.125_c16_s1_relu"
    assert table.predict(arch) > 0
