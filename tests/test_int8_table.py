"""Latency tables that know bits: fp32 files from before are unchanged, int8 entries and their
transitions round-trip, a missing precision is a clear error, and a mixed-precision prediction is
the sum of its layers at their precisions plus a Q or DQ wherever the precision changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from predictors.cost import layer_weights
from predictors.latency import (
    Calibration,
    LatencyTable,
    LatencyTableError,
    Measurement,
    MeasureSettings,
    MissingEntriesError,
)
from predictors.latency.precision import parse_precisions, transition_key
from search_spaces.build import layer_shapes
from tiny_space import TinySpace

FP32_V1 = Path(__file__).parent / "fixtures" / "fp32_lut_calibrated_v1.json"


def ms(value: float) -> Measurement:
    return Measurement(value, value, value, 1)


def smallest_arch():
    """stem (3x16x16) -> mb_k3_e1 stride 2 (8x8x8) -> head (16x4x4), 4 classes."""
    return TinySpace().decode([0, 0, 0])


def int8_table() -> LatencyTable:
    """The fp32 fixture plus int8 entries at a third of fp32 and Q/DQ at 0.1/0.2 ms per tensor."""
    table = LatencyTable.load(FP32_V1)
    table.add_precision("int8", {"backend": "onnxruntime", "precision": "int8"})
    for key, measurement in table.entries.items():
        table.add(key, ms(measurement.median_ms / 3), "int8")
    for shape in ((1, 3, 16, 16), (1, 8, 8, 8), (1, 16, 4, 4), (1, 4)):
        table.add_transition(transition_key("quantize", shape), ms(0.1), "int8")
        table.add_transition(transition_key("dequantize", shape), ms(0.2), "int8")
    return table


def test_an_fp32_table_written_before_precisions_loads_and_predicts_as_it_did(tmp_path: Path) -> None:
    table = LatencyTable.load(FP32_V1)
    arch = smallest_arch()
    assert table.precisions == ("fp32",)
    # raw: stem 2.6 + block 2.6 + head 4.0; calibrated: 0.5 x 9.2 + 2.0 ms/M x 1056 weights + 0.25
    assert table.predict(arch, calibrated=False) == pytest.approx(9.2)
    assert table.predict(arch) == pytest.approx(4.852112)
    assert table.predict(arch, precision="fp32") == table.predict(arch)
    table.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(FP32_V1.read_text())


def test_int8_entries_transitions_and_calibration_round_trip(tmp_path: Path) -> None:
    table = int8_table()
    table.set_calibration("int8", Calibration(1.5, 0.1, 12), {"samples": 12})
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.to_dict() == table.to_dict()
    assert again.precisions == ("fp32", "int8")
    assert again.entries_for("int8")["stem_k3_c8_s2_relu@3x16x16"] == ms(2.6 / 3)
    assert again.sections["int8"].transitions["dequantize@4"] == ms(0.2)
    assert again.calibration_for("int8") == Calibration(1.5, 0.1, 12)
    assert again.calibration_for("fp32") == Calibration(0.5, 0.25, 20, 2.0)  # fp32's own, untouched


def test_a_precision_the_table_lacks_names_the_ones_it_holds() -> None:
    table = LatencyTable.load(FP32_V1)
    with pytest.raises(LatencyTableError, match=r"holds precision\(s\) fp32, not 'int8'.*--precision int8"):
        table.predict(smallest_arch(), precision="int8")
    with pytest.raises(LatencyTableError, match="precision='int4': expected one of fp32, int8"):
        table.layer_latencies(smallest_arch(), precision="int4")
    with pytest.raises(LatencyTableError, match="--precision='fp16': expected one of fp32, int8"):
        parse_precisions("fp32,fp16")
    assert parse_precisions("int8, fp32") == ("fp32", "int8")


def test_uniform_int8_adds_the_input_quantize_and_the_output_dequantize() -> None:
    table = int8_table()
    # (2.6 + 2.6 + 4.0) / 3 + quantize@3x16x16 (0.1) + dequantize@4 (0.2)
    assert table.predict(smallest_arch(), calibrated=False, precision="int8") == pytest.approx(9.2 / 3 + 0.3)


def test_a_mixed_prediction_is_the_hand_sum_of_layers_and_borders() -> None:
    table, arch = int8_table(), smallest_arch()
    costs = table.layer_costs(arch, {"blocks.0": "int8"}, calibrated=False)
    assert [(c.name, c.key, c.precision) for c in costs] == [
        ("stem", "stem_k3_c8_s2_relu@3x16x16", "fp32"),
        ("blocks.0 input", "quantize@8x8x8", "int8"),
        ("blocks.0", "mb_k3_e1_c16_s2_relu@8x8x8", "int8"),
        ("head input", "dequantize@16x4x4", "int8"),
        ("head", "head_conv32_hidden0_relu_classes4@16x4x4", "fp32"),
    ]
    assert table.predict_mixed(arch, ["fp32", "int8", "fp32"], calibrated=False) == pytest.approx(
        2.6 + 0.1 + 2.6 / 3 + 0.2 + 4.0)
    # calibrated: fp32 layers by fp32's calibration, int8 rows by int8's, intercepts weighted 2:1 by layers
    table.set_calibration("int8", Calibration(1.5, 0.1, 12), None)
    weights = [layer_weights(layer) for layer in layer_shapes(arch)]
    expected = (0.5 * 2.6 + 2.0 * weights[0] / 1e6) + 1.5 * 0.1 + 1.5 * 2.6 / 3 + 1.5 * 0.2 \
        + (0.5 * 4.0 + 2.0 * weights[2] / 1e6) + (2 * 0.25 + 0.1) / 3
    assert table.predict_mixed(arch, ["fp32", "int8", "fp32"]) == pytest.approx(expected)
    assert table.predict_mixed(arch, ["int8"] * 3) == pytest.approx(table.predict(arch, precision="int8"))


def test_a_mixed_prediction_refuses_wrong_lengths_names_and_missing_borders() -> None:
    table, arch = int8_table(), smallest_arch()
    with pytest.raises(LatencyTableError, match="precisions has 2 values; this architecture has 3 layers"):
        table.predict_mixed(arch, ["int8", "int8"])
    with pytest.raises(LatencyTableError, match=r"names layers \['blocks.7'\]"):
        table.predict_mixed(arch, {"blocks.7": "int8"})
    del table.sections["int8"].transitions["quantize@8x8x8"]
    with pytest.raises(MissingEntriesError, match=r"quantize@8x8x8 \[int8\]"):
        table.predict_mixed(arch, {"blocks.0": "int8"})


def test_a_file_whose_precisions_disagree_with_its_sections_is_refused(tmp_path: Path) -> None:
    data = int8_table().to_dict()
    data["metadata"]["precisions"] = ["fp32"]
    with pytest.raises(LatencyTableError, match=r"holds sections \['int8'\], but metadata.precisions lists"):
        LatencyTable.from_dict(data, source="t.json")


def test_the_int8_backend_times_a_tiny_layer_between_uint8_tensors() -> None:
    from compress.quantize_backend import Int8Measurer
    from compress.quantize_layer_export import int8_layer_model
    from compress.quantize_onnx import optimized_op_counts
    from search_spaces.build import build_layer

    stem, block, _ = layer_shapes(smallest_arch())  # stem on 3x16x16, mb_k3_e1_c16_s2 on 8x8x8
    model, borders = int8_layer_model(build_layer(block), block.input_shape)
    assert borders == {"input": "uint8", "output": "uint8", "input_shape": [1, 8, 8, 8]}
    # only the block's two int8 convs: no Q/DQ and no layout Transpose at its borders
    assert optimized_op_counts(model) == {"QLinearConv": 2}
    assert int8_layer_model(build_layer(stem), stem.input_shape)[1]["input_shape"] == [1, 16, 16, 3]  # N, H, W, C
    measurer = Int8Measurer(settings=MeasureSettings(warmup=1, blocks=2, block_runs=2))
    (layer,), (quantize,) = measurer.measure_layers([block]), measurer.measure_transitions([("quantize", (1, 4))])
    for measurement in (layer, quantize):
        assert 0 < measurement.median_ms < 1e3 and measurement.runs == 4


def test_int8_is_refused_through_a_device_agent_and_on_another_backend() -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    for extra, message in ((["--device", "http://127.0.0.1:1", "--token", "t"], "device agent measures fp32"),
                           (["--backend", "torch"], "runs on --backend onnxruntime only"),
                           (["--backend", "onnxruntime-int8"], "use --backend onnxruntime --precision int8")):
        result = CliRunner().invoke(app, ["lut", "build", "--space", "proxyless", "--out", "unused.json",
                                          "--precision", "fp32,int8", *extra])
        assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_validating_int8_calibrates_int8_and_leaves_fp32_alone() -> None:
    from predictors.latency import validate_table

    table = int8_table()

    class WholeInt8:  # "measures" each network at 2 x its raw int8 sum + 0.1 ms
        def measure_archs(self, archs, progress=None):
            return [ms(2 * table.predict(arch, calibrated=False, precision="int8") + 0.1) for arch in archs]

    report = validate_table(table, TinySpace(), WholeInt8(), samples=6, precision="int8")
    assert report.raw.spearman == pytest.approx(1.0)
    assert table.calibration_for("int8").slope == pytest.approx(2.0, abs=1e-6)
    assert table.calibration_for("int8").intercept_ms == pytest.approx(0.1, abs=1e-6)
    assert table.sections["int8"].validation["samples"] == 6
    assert table.calibration == Calibration(0.5, 0.25, 20, 2.0)


def test_nas_lut_predict_at_int8_lists_the_layers_and_the_float_borders(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    int8_table().save(tmp_path / "t.json")
    (tmp_path / "arch.json").write_text(smallest_arch().to_json())
    result = CliRunner().invoke(app, ["lut", "predict", str(tmp_path / "t.json"), str(tmp_path / "arch.json"),
                                      "--precision", "int8", "--raw", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["latency_ms"] == pytest.approx(9.2 / 3 + 0.3) and answer["precision"] == "int8"
    assert [row["key"] for row in answer["layers"]] == [
        "quantize@3x16x16", "stem_k3_c8_s2_relu@3x16x16", "mb_k3_e1_c16_s2_relu@8x8x8",
        "head_conv32_hidden0_relu_classes4@16x4x4", "dequantize@4"]
