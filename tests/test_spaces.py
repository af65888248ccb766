"""The `mnasnet` and `proxyless` search spaces: decode/encode, canonical vectors, exact sizes,
candidate ops (what a latency table must hold), Optuna, the CLI, and the published Pixel 1 table."""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from search_spaces.build import LayerShape, build_model, layer_shapes
from search_spaces.space import SearchSpace, small_input_strides
from search_spaces.spaces import SPACES, MnasNetSpace, ProxylessSpace, get_space
from search_spaces.spec import Activation, ArchSpec, BlockSpec, Op, SpecError

NAMES = ("mnasnet", "proxyless")
RESOLUTIONS = (32, 224)
PROPERTY = settings(max_examples=50, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
LUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "luts" / "proxylessnas_pixel1" / "mobile_trim.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@functools.cache
def space(name: str, resolution: int) -> SearchSpace:
    return get_space(name, resolution=resolution, num_classes=10 if resolution <= 64 else 1000)


@functools.cache
def candidate_signatures(name: str, resolution: int) -> frozenset[str]:
    return frozenset(layer.signature for layer in space(name, resolution).candidate_ops())


def vectors(s: SearchSpace) -> st.SearchStrategy[list[int]]:
    return st.tuples(*(st.integers(0, n - 1) for n in s.cardinalities)).map(list)


CASES = [(name, resolution) for name in NAMES for resolution in RESOLUTIONS]


# -- registry and layout ---------------------------------------------------------------------------
def test_spaces_are_registered_and_layouts_are_as_documented() -> None:
    assert {"mnasnet", "proxyless"} <= set(SPACES.names())
    assert isinstance(get_space("proxyless"), ProxylessSpace) and isinstance(get_space("mnasnet"), MnasNetSpace)
    proxyless = space("proxyless", 224)
    assert proxyless.cardinalities == [3] + [6, 7, 7, 7] * 5 + [6]
    assert proxyless.decisions[2].labels == ("skip", "k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
    mnasnet = space("mnasnet", 224)
    assert len(mnasnet.decisions) == 42 and mnasnet.decisions[0].name == "stage1.op"
    assert [s.widths for s in mnasnet.stages] == [(16, 24), (24, 32), (24, 32, 40), (48, 64, 80), (72, 96, 120),
                                                   (120, 160, 200), (240, 320, 400)]
    assert [s.layers for s in mnasnet.stages] == [(1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (2, 3, 4), (2, 3, 4), (1, 2)]
    # shuffle only where a stage starts with a stride-2 unit (the only one that changes width)
    assert [Op.SHUFFLE in s.ops for s in mnasnet.stages] == [False, True, True, True, False, True, False]


def test_small_input_rule() -> None:
    assert small_input_strides(224, 2, [1, 2, 2, 2, 1, 2, 1]) == (2, [1, 2, 2, 2, 1, 2, 1])
    assert small_input_strides(64, 2, [1, 2, 2, 2, 1, 2, 1]) == (1, [1, 1, 2, 2, 1, 2, 1])
    for name in NAMES:
        for resolution, final in ((224, 7), (96, 3), (64, 8), (32, 4)):
            arch = space(name, resolution).sample(np.random.default_rng(0))
            assert layer_shapes(arch)[-1].in_size == final, (name, resolution)
    # at 32 px the 24-wide stage has stride 1, so stage 1 may not also be 24 wide (visible boundary)
    assert space("mnasnet", 32).stages[0].widths == (16,)
    assert Op.SHUFFLE not in space("mnasnet", 32).stages[1].ops


def test_bad_vectors_and_options_are_refused() -> None:
    s = space("proxyless", 224)
    with pytest.raises(SpecError, match="expected 22"):
        s.decode([0] * 21)
    with pytest.raises(SpecError, match=r"stage1\.layer1\)=6 not in 0\.\.5"):
        s.decode([0, 6] + [0] * 20)
    with pytest.raises(SpecError, match="base='resnet'"):
        MnasNetSpace(base="resnet")
    with pytest.raises(SpecError, match="no width left"):
        MnasNetSpace(base=((16, 1, 2), (16, 2, 1)), width_multipliers=(1.0,))


# -- decoding, building, encoding ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_samples_and_mutants_build_and_run_at_32(name: str) -> None:
    s, rng = space(name, 32), np.random.default_rng(1)
    archs = [s.sample(rng) for _ in range(2)]
    archs.append(s.mutate(archs[0], rng))
    x = torch.randn(2, 3, 32, 32)
    for arch in archs:
        model = build_model(arch).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 10)


def test_one_forward_pass_at_64() -> None:
    arch = space("proxyless", 64).decode([0] * 22)  # shallowest network: one layer per stage
    with torch.no_grad():
        assert build_model(arch).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(("name", "resolution"), CASES)
@PROPERTY
@given(data=st.data())
def test_encode_inverts_decode_up_to_the_canonical_vector(name: str, resolution: int, data: st.DataObject) -> None:
    s = space(name, resolution)
    vector = data.draw(vectors(s))
    arch = s.decode(vector)
    canonical = s.canonical(vector)
    assert list(s.encode(arch)) == canonical
    assert s.decode(canonical) == arch
    assert s.canonical(canonical) == canonical
    assert ArchSpec.from_json(arch.to_json()) == arch


@st.composite
def canonical_proxyless_vectors(draw: st.DrawFn) -> list[int]:
    """Built directly: per stage a first pair, then d more layers, then skips (index 0)."""
    vector = [draw(st.integers(0, 2))]
    for depth in (4, 4, 4, 4, 4, 1):
        extra = draw(st.integers(0, depth - 1))
        layers = [draw(st.integers(1, 6)) for _ in range(extra)]
        vector += [draw(st.integers(0, 5)), *layers] + [0] * (depth - 1 - extra)
    return vector


@PROPERTY
@given(vector=canonical_proxyless_vectors())
def test_proxyless_canonical_vectors_round_trip_exactly(vector: list[int]) -> None:
    s = space("proxyless", 224)
    assert list(s.encode(s.decode(vector))) == vector


def test_proxyless_skip_means_absent() -> None:
    s = space("proxyless", 224)
    spread = [0] + [1, 0, 2, 0] + [1, 1, 1, 1] * 4 + [0]
    packed = [0] + [1, 2, 0, 0] + [1, 1, 1, 1] * 4 + [0]
    assert s.decode(spread) == s.decode(packed) and s.canonical(spread) == packed
    assert len(s.decode(spread).blocks) == 1 + 2 + 4 * 4 + 1


def test_mnasnet_ignored_fields_are_canonical() -> None:
    s = space("mnasnet", 224)
    ds, ghost = s.stages[1].ops.index(Op.DSCONV), s.stages[1].ops.index(Op.GHOST)
    base = [0] * 42
    one = base[:6] + [ds, 1, 2, 1, 1, 0] + base[12:]
    other = base[:6] + [ds, 1, 0, 0, 1, 0] + base[12:]
    assert s.decode(one) == s.decode(other) and s.canonical(one) == other
    blocks = s.decode(base[:6] + [ghost, 2, 1, 0, 2, 0] + base[12:]).blocks[1:4]
    assert [b.kernel for b in blocks] == [7, 3, 3]  # only the strided first layer uses the kernel


@pytest.mark.parametrize(("name", "resolution"), CASES)
def test_mutate_changes_the_network_and_stays_in_the_space(name: str, resolution: int) -> None:
    s, rng = space(name, resolution), np.random.default_rng(3)
    arch = s.sample(rng)
    for _ in range(20):
        child = s.mutate(arch, rng)
        assert child != arch
        assert s.decode(s.encode(child)) == child
        arch = child


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples(name: str) -> None:
    s = space(name, 224)
    first = [s.sample(np.random.default_rng(11)).to_json() for _ in range(3)]
    again = [s.sample(np.random.default_rng(11)).to_json() for _ in range(3)]
    assert first == again and s.sample(np.random.default_rng(12)).to_json() != first[0]


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_proxyless_size_is_exact(resolution: int) -> None:
    # first block: 3 kernels; a stage of at most L layers: 6 first pairs x (1 + 6 + ... + 6**(L-1))
    # networks (skipped layers are absent, so only the count of present ones matters); 320: 6.
    expected = 3 * (6 * (1 + 6 + 6**2 + 6**3)) ** 5 * 6
    s = space("proxyless", resolution)
    assert s.size() == expected == 163_127_649_097_530_432
    assert s.log10_size() == pytest.approx(17.2125, abs=1e-4)
    assert s.num_vectors() == 3 * (6 * 7**3) ** 5 * 6


def test_mnasnet_size_is_the_product_of_stage_choices() -> None:
    # per stage: (24 per op with kernel x expansion x SE, 3 for dsconv) x widths x layers
    def stage(ops: int, widths: int, layers: int) -> int:
        return ((ops - 1) * 3 * 4 * 2 + 3) * widths * layers

    at_224 = [stage(3, 2, 2), stage(4, 2, 3), stage(4, 3, 3), stage(4, 3, 3), stage(3, 3, 3), stage(4, 3, 3),
              stage(3, 3, 2)]
    assert space("mnasnet", 224).size() == math.prod(at_224) == 3_965_410_130_118_750_000
    at_32 = [stage(3, 1, 2), stage(3, 2, 3)] + at_224[2:]
    assert space("mnasnet", 32).size() == math.prod(at_32)


TINY = [
    # ghost + dsconv, stride-1 stages whose widths would touch (stage 1 loses 24)
    dict(resolution=32, base=((16, 1, 1), (24, 2, 1)), ops=("ghost", "dsconv"), kernels=(3, 5),
         expand_ratios=(1, 3), se_ratios=(0,)),
    # mbconv + shuffle + dsconv with SE, a stride-2 stage (shuffle allowed) then a stride-1 one
    dict(resolution=96, base=((16, 1, 2), (32, 2, 1)), ops=("mbconv", "shuffle", "dsconv"), kernels=(3,),
         expand_ratios=(1, 3), se_ratios=(0, 0.25), width_multipliers=(1.0, 1.25)),
]


@pytest.mark.parametrize("options", TINY, ids=["ghost-dsconv", "mbconv-shuffle"])
def test_tiny_mnasnet_spaces_exhaustively(options: dict) -> None:
    """Every vector: encode(decode(v)) == canonical(v); size() == distinct networks; candidate
    ops == exactly the union of the layers of all networks (nothing missing, nothing extra)."""
    s = MnasNetSpace(num_classes=4, **options)
    networks: dict[ArchSpec, list[int]] = {}
    for vector in itertools.product(*(range(n) for n in s.cardinalities)):
        arch = s.decode(vector)
        assert list(s.encode(arch)) == s.canonical(vector)
        assert networks.setdefault(arch, s.canonical(vector)) == s.canonical(vector)
    assert s.size() == len(networks) < s.num_vectors()
    used = {signature for arch in networks for signature in s.layer_signatures(arch)}
    assert candidate_signatures_of(s) == used


def candidate_signatures_of(s: SearchSpace) -> set[str]:
    signatures = [layer.signature for layer in s.candidate_ops()]
    assert len(signatures) == len(set(signatures))
    return set(signatures)


# -- candidate ops ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "resolution"), CASES)
@PROPERTY
@given(data=st.data())
def test_candidate_ops_cover_every_layer(name: str, resolution: int, data: st.DataObject) -> None:
    s = space(name, resolution)
    arch = s.decode(data.draw(vectors(s)))
    assert set(s.layer_signatures(arch)) <= candidate_signatures(name, resolution)


@pytest.mark.parametrize(("name", "resolution", "count"),
                         [("proxyless", 224, 71), ("proxyless", 32, 71), ("mnasnet", 224, 4053), ("mnasnet", 32, 3721)])
def test_candidate_op_counts(name: str, resolution: int, count: int) -> None:
    assert len(candidate_signatures_of(space(name, resolution))) == count


def _proxyless_yaml_keys(layer: LayerShape) -> list[str]:
    """The `mobile_trim.yaml` key(s) of one of our layers (format in its ORIGIN.md)."""
    i, o = layer.in_size, layer.out_size
    if layer.kind == "stem":
        return [f"Conv-input:{i}x{i}x{layer.in_channels}-output:{o}x{o}x{layer.out_channels}"]
    if layer.kind == "head":
        conv = layer.part.conv_channels
        return [f"Conv_1-input:{i}x{i}x{layer.in_channels}-output:{i}x{i}x{conv}",
                f"Logits-input:{i}x{i}x{conv}-output:{layer.out_channels}"]
    block = layer.part
    assert block.op is Op.MBCONV and block.activation is Activation.RELU6 and not block.se_ratio
    return [f"expanded_conv-input:{i}x{i}x{layer.in_channels}-output:{o}x{o}x{layer.out_channels}"
            f"-expand:{block.expand_ratio:g}-kernel:{block.kernel}-stride:{block.stride}"
            f"-idskip:{int(block.has_residual(layer.in_channels))}"]


@pytest.mark.skipif(not LUT.is_file(), reason="the shared ProxylessNAS Pixel 1 table is not present")
def test_proxyless_candidates_are_exactly_the_pixel1_table_keys() -> None:
    keys = re.findall(r"^((?:Conv|Conv_1|Logits|expanded_conv)-input:\S+):\s*$", LUT.read_text(), re.MULTILINE)
    assert len(keys) == len(set(keys)) == 72
    mapped = [key for layer in space("proxyless", 224).candidate_ops() for key in _proxyless_yaml_keys(layer)]
    assert len(mapped) == len(set(mapped))  # no two of our ops share a key
    assert set(mapped) == set(keys)  # and every key is one of our ops


# -- Optuna and the CLI ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_suggest_with_a_real_optuna_trial(name: str) -> None:
    s = space(name, 32)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    known = s.sample(np.random.default_rng(5))
    study.enqueue_trial(s.to_params(s.encode(known)))
    suggested = []
    for _ in range(3):
        trial = study.ask()
        arch = s.suggest(trial)
        assert s.decode(s.from_params(trial.params)) == arch
        study.tell(trial, float(len(arch.blocks)))
        suggested.append(arch)
    assert suggested[0] == known and len(set(suggested)) == 3


def _cli() -> typer.Typer:
    from nas.commands import spaces as spaces_command

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, as in `nas`
        pass

    spaces_command.register(app)
    return app


def test_cli_lists_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from nas.commands import spaces as spaces_command

    monkeypatch.setattr(spaces_command, "console", Console(width=200))
    result = CliRunner().invoke(_cli(), ["spaces", "--resolution", "32", "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    assert "mnasnet" in result.output and "proxyless" in result.output
    assert "163127649097530432" in result.output and str(space("mnasnet", 32).size()) in result.output


def test_cli_sample_writes_reproducible_files(tmp_path: Path) -> None:
    runner, app = CliRunner(), _cli()

    def run(out: Path, seed: int) -> dict[str, str]:
        result = runner.invoke(app, ["spaces", "sample", "proxyless", "--n", "3", "--seed", str(seed), "--out",
                                     str(out), "--resolution", "32", "--num-classes", "10"])
        assert result.exit_code == 0, result.output
        assert "mb_k" in result.output
        return {path.name: path.read_text() for path in sorted(out.iterdir())}

    first, again, other = run(tmp_path / "a", 4), run(tmp_path / "b", 4), run(tmp_path / "c", 5)
    assert len(first) == 3 and first == again and first != other
    for name, text in first.items():
        arch = ArchSpec.from_dict(json.loads(text))
        assert re.fullmatch(rf"proxyless_\d_{arch.content_hash()}\.json", name)
        space("proxyless", 32).encode(arch)
    bad = runner.invoke(app, ["spaces", "sample", "resnet", "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "unknown search space 'resnet'" in bad.output


# -- architectures that are not in the space -------------------------------------------------------
def test_encode_names_what_does_not_fit() -> None:
    proxyless = space("proxyless", 224)
    arch = proxyless.sample(np.random.default_rng(0))
    blocks = list(arch.blocks)
    cases = [
        (arch.replace(resolution=192), r"resolution=192"),
        (arch.replace(stem=arch.stem.__class__(32, 3, 1, Activation.RELU6)), r"stem\.stride=1 \(expected 2\)"),
        (arch.with_blocks(blocks[:3] + [BlockSpec(Op.MBCONV, 24, 1, 5, 4, activation=Activation.RELU6)] + blocks[4:]),
         r"blocks\[3\] kernel=5, expand_ratio=4 not in"),
        (arch.with_blocks(blocks[:2] + [BlockSpec(Op.MBCONV, 24, 1, 3, 3)] + blocks[3:]),
         r"blocks\[2\]\.activation=relu \(expected relu6\)"),
        (arch.with_blocks(blocks + [blocks[-1]]), r"at most 1 layer"),
    ]
    for bad, message in cases:
        with pytest.raises(SpecError, match=message):
            proxyless.encode(bad)

    mnasnet = space("mnasnet", 224)
    arch = mnasnet.sample(np.random.default_rng(0))
    blocks = list(arch.blocks)
    odd_width = BlockSpec(blocks[0].op, 56, blocks[0].stride, blocks[0].kernel, blocks[0].expand_ratio,
                          se_ratio=blocks[0].se_ratio)
    inside = next(i for i in range(1, len(blocks)) if blocks[i] == blocks[i - 1])  # a repeated layer
    other_kernel = BlockSpec(blocks[inside].op, blocks[inside].out_channels, 1, 5 if blocks[inside].kernel != 5 else 7,
                             blocks[inside].expand_ratio, se_ratio=blocks[inside].se_ratio)
    cases = [
        (arch.with_blocks([odd_width] + blocks[1:]), r"blocks\[0\]\.out_channels=56 not in \{16, 24\} \(stage1\)"),
        (arch.with_blocks(blocks[:inside] + [other_kernel] + blocks[inside + 1:]), rf"blocks\[{inside}\]\.kernel="),
        (arch.with_blocks(blocks + [blocks[-1]] * 3), r"not in \{1, 2\}"),
        (arch.with_blocks(blocks[:-1]), r"stage7 has none"),
    ]
    for bad, message in cases:
        with pytest.raises(SpecError, match=message):
            mnasnet.encode(bad)
    with pytest.raises(SpecError, match="proxyless"):
        proxyless.encode(mnasnet.sample(np.random.default_rng(0)).replace(resolution=224))


def test_zoo_models_against_the_spaces() -> None:
    """MnasNet-A1 lies in the mnasnet space centred on it (x1.0 widths, base layer counts);
    ProxylessNAS-Mobile does not lie in the Pixel 1 table's space: its second stage is 32 wide."""
    from search_spaces import zoo

    a1 = MnasNetSpace(base="mnasnet_a1")
    params = a1.describe_vector(a1.encode(zoo.get("mnasnet_a1")))
    assert [params[f"stage{i}.width"] for i in range(1, 8)] == ["16", "24", "40", "80", "112", "160", "320"]
    assert [params[f"stage{i}.layers"] for i in range(1, 8)] == ["1", "2", "3", "4", "2", "3", "1"]
    proxyless = space("proxyless", 224)
    mobile = zoo.get("proxylessnas_mobile")
    with pytest.raises(SpecError, match=r"head\.dropout=0 \(expected 0\.1\)"):
        proxyless.encode(mobile)
    with pytest.raises(SpecError, match=r"blocks\[1\]\.out_channels=32, but stage1 must start there with 24"):
        proxyless.encode(mobile.replace(head=proxyless.head))
