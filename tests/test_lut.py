"""LatencyTable: schema round trip, resumable builds, missing-key errors, published-table import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from predictors.latency import (
    LatencyTable,
    LatencyTableError,
    Measurement,
    MissingEntriesError,
    build_table,
    import_proxyless_yaml,
)
from search_spaces.build import layer_shapes
from tiny_space import TinySpace

PIXEL1 = Path(__file__).resolve().parents[1].parent / "shared/data/luts/proxylessnas_pixel1/mobile_trim.yaml"


class CountingMeasurer:
    """Deterministic fake latencies (1 ms per 10 characters of key) and a record of what it measured."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.measured: list[str] = []
        self.fail_after = fail_after

    def metadata(self) -> dict:
        return {"backend": "fake", "threads": 1, "device": "test"}

    def measure_layers(self, layers, progress=None):
        out = []
        for layer in layers:
            if self.fail_after is not None and len(self.measured) >= self.fail_after:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
            self.measured.append(layer.signature)
            out.append(Measurement(len(layer.signature) / 10, len(layer.signature) / 10, len(layer.signature) / 10, 1))
        return out

    def measure_archs(self, archs, progress=None):
        raise NotImplementedError


def test_build_covers_every_candidate_op(tmp_path: Path) -> None:
    space = TinySpace()
    table = build_table(space, CountingMeasurer(), tmp_path / "t.json")
    assert set(table.entries) == {layer.signature for layer in space.candidate_ops()}
    # 1 stem + 4 first blocks (k x e) + 4 second blocks + 1 head
    assert len(table) == 10
    for arch in space.all_archs():
        expected = sum(len(layer.signature) / 10 for layer in layer_shapes(arch))
        assert table.predict(arch) == pytest.approx(expected)


def test_schema_round_trip(tmp_path: Path) -> None:
    table = build_table(TinySpace(), CountingMeasurer(), tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.to_dict() == table.to_dict()
    data = json.loads((tmp_path / "t.json").read_text())
    assert (data["schema"], data["schema_version"], data["space"], data["resolution"]) == (
        "hwnas-latency-table", 1, "tiny", 16)
    assert data["metadata"]["backend"] == "fake" and "created" in data["metadata"]


def test_resume_measures_only_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    with pytest.raises(KeyboardInterrupt):
        build_table(TinySpace(), CountingMeasurer(fail_after=5), path, chunk_size=2)
    partial = LatencyTable.load(path)
    assert len(partial) == 4  # two complete chunks were written before the interruption
    second = CountingMeasurer()
    table = build_table(TinySpace(), second, path)
    assert len(second.measured) == 6
    assert not set(second.measured) & set(partial.entries)
    assert len(table) == 10
    third = CountingMeasurer()
    build_table(TinySpace(), third, path)
    assert third.measured == []


def test_foreign_or_corrupt_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    build_table(TinySpace(), CountingMeasurer(), path)
    with pytest.raises(LatencyTableError, match=r"resolution=16 \(requested 32\)"):
        build_table(TinySpace(resolution=32), CountingMeasurer(), path)
    before = path.read_text()
    assert LatencyTable.load(path).to_dict() == json.loads(before)  # untouched
    path.write_text("{not json")
    with pytest.raises(LatencyTableError, match="corrupt latency table"):
        build_table(TinySpace(), CountingMeasurer(), path)
    path.write_text(json.dumps({"schema": "hwnas-latency-table", "schema_version": 99, "entries": {}}))
    with pytest.raises(LatencyTableError, match=r"schema_version=99 not in \{1\}"):
        LatencyTable.load(path)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(LatencyTableError, match="not a latency table"):
        LatencyTable.load(path)


def test_missing_keys_are_listed(tmp_path: Path) -> None:
    space = TinySpace()
    table = build_table(space, CountingMeasurer(), tmp_path / "t.json")
    arch = space.decode([1, 1, 1])
    dropped = [layer.signature for layer in layer_shapes(arch)[1:3]]
    for key in dropped:
        del table.entries[key]
    with pytest.raises(MissingEntriesError) as error:
        table.predict(arch)
    assert error.value.keys == dropped
    assert all(key in str(error.value) for key in dropped)


FIXTURE = """\
Conv-input:32x32x3-output:16x16x8:
  count: 10
  mean: 1.0
  var: 0.01
expanded_conv-input:16x16x8-output:16x16x4-expand:1-kernel:3-stride:1-idskip:0:
  count: 10
  mean: 0.5
  var: 0.0
expanded_conv-input:16x16x4-output:8x8x8-expand:3-kernel:5-stride:2-idskip:0:
  count: 10
  mean: 2.25
  var: 0.04
expanded_conv-input:8x8x8-output:8x8x8-expand:6-kernel:7-stride:1-idskip:1:
  count: 10
  mean: 3.0
  var: 0.09
Conv_1-input:8x8x8-output:8x8x64:
  count: 10
  mean: 0.75
  var: 0.01
Logits-input:8x8x64-output:10:
  count: 10
  mean: 0.125
  var: 0.0
"""


def fixture_arch():
    from search_spaces.spec import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec

    blocks = (
        BlockSpec(Op.MBCONV, 4, 1, 3, 1, activation="relu6"),
        BlockSpec(Op.MBCONV, 8, 2, 5, 3, activation="relu6"),
        BlockSpec(Op.MBCONV, 8, 1, 7, 6, activation="relu6"),
    )
    return ArchSpec(StemSpec(8, activation="relu6"), blocks, HeadSpec(64, activation="relu6"), resolution=32, num_classes=10)


def test_proxyless_yaml_import_maps_every_key(tmp_path: Path) -> None:
    source = tmp_path / "lut.yaml"
    source.write_text(FIXTURE)
    table = import_proxyless_yaml(source)
    assert (table.space, table.resolution, table.num_classes, len(table)) == ("proxyless", 32, 10, 5)
    assert table.metadata["source_keys"] == 6
    assert table.predict(fixture_arch()) == pytest.approx(1.0 + 0.5 + 2.25 + 3.0 + 0.75 + 0.125)
    head = table.layer_latencies(fixture_arch())[-1]
    assert head == ("head", "head_conv64_hidden0_relu6_classes10@8x8x8", 0.875)
    block = table.entries["mb_k5_e3_c8_s2_relu6@4x16x16"]
    assert block.p90_ms == pytest.approx(2.25 + 1.2815515655446004 * 0.2)


def test_proxyless_yaml_rejects_unknown_keys_and_contradictions(tmp_path: Path) -> None:
    source = tmp_path / "lut.yaml"
    source.write_text(FIXTURE + "Pool-input:1x1x1:\n  mean: 1.0\n")
    with pytest.raises(LatencyTableError, match="'Pool-input:1x1x1' is not a ProxylessNAS mobile LUT key"):
        import_proxyless_yaml(source)
    source.write_text(FIXTURE.replace("stride:1-idskip:1", "stride:1-idskip:0"))
    with pytest.raises(LatencyTableError, match="idskip:0 contradicts the shapes"):
        import_proxyless_yaml(source)


@pytest.mark.skipif(not PIXEL1.exists(), reason="needs ../shared/data/luts (published Pixel 1 table)")
def test_published_pixel1_table_imports_and_names_what_proxylessnas_mobile_lacks() -> None:
    from search_spaces import zoo

    table = import_proxyless_yaml(PIXEL1)
    assert table.metadata["source_keys"] == 72
    assert len(table) == 71  # Conv_1 and Logits form our single head entry
    with pytest.raises(MissingEntriesError) as error:
        table.predict(zoo.get("proxylessnas_mobile"))
    assert error.value.keys == [
        "mb_k5_e3_c32_s2_relu6@16x112x112",
        "mb_k3_e3_c32_s1_relu6@32x56x56",
        "mb_k7_e3_c40_s2_relu6@32x56x56",
    ]


def test_a_build_on_a_busy_machine_says_so_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from predictors.latency.measure import UNSTABLE_ITEMS

    class NoisyMeasurer(CountingMeasurer):  # as the protocol reports each chunk's unstable items
        def measure_layers(self, layers, progress=None):
            logging.getLogger("predictors.latency.measure").warning(
                "%d of %d item(s) still unstable ...", 1, len(layers), extra={UNSTABLE_ITEMS: 1})
            return super().measure_layers(layers, progress)

    todo = len(TinySpace().candidate_ops())
    with caplog.at_level("WARNING"):
        build_table(TinySpace(), NoisyMeasurer(), tmp_path / "t.json", chunk_size=2)
    chunks = -(-todo // 2)
    assert [r.getMessage().split(": ")[1].split(" ops")[0] for r in caplog.records] == [f"{chunks} of {todo}"]
    assert "still unstable" not in caplog.text and "likely busy" in caplog.text
