"""HAQ's latency mode (issue #16 item 4): mixed fp32/int8 policies exported with Q/DQ only at
precision boundaries, the search under a predicted-latency budget, its table and baselines."""

from __future__ import annotations

import pytest
import torch
from test_haq import _output_agreement
from test_int8_graph import relu_spec, trained_like
from test_quantize import batches, tiny_model

from compress.haq import HaqConfig, search_quant_policy
from compress.haq_latency import LayerLatencyTable, predicted_ms
from compress.haq_measure import export_policy, latency_baselines, layer_names, single_fp32_policy
from compress.quantize_export import check_qdq_export
from compress.quantize_onnx import optimized_op_counts
from search_spaces.errors import InputFileError, UserError

SHAPE = (1, 3, 16, 16)


def test_mixed_policy_runs_kept_layers_float_and_the_rest_on_int8_kernels() -> None:
    model = trained_like(relu_spec())
    names = layer_names(model, SHAPE)  # 8 convs, then the classifier
    assert len(names) == 9 and names[2] == "blocks.0.depthwise.0" and names[-1] == "head.classifier"
    policy = single_fp32_policy(names, "blocks.0.depthwise.0")
    policy = single_fp32_policy([n for n in names if n in policy.layers], "head.classifier")
    check_inputs = torch.cat(batches(1, seed=5))
    qmodel, onnx_model = export_policy(model, policy, batches(2), SHAPE, check_inputs=check_inputs)
    ops = optimized_op_counts(onnx_model)
    # 7 int8 convs (the expand before the float depthwise too: it gets an output Q at the boundary),
    # the kept depthwise as a float Conv, the kept classifier as a float Gemm, the residual add int8
    assert (ops["QLinearConv"], ops["Conv"], ops["Gemm"], ops["QLinearAdd"]) == (7, 1, 1, 1)
    assert "QGemm" not in ops
    check = check_qdq_export(qmodel, onnx_model, check_inputs)
    assert check.top1_agreement == 1.0
    # ORT left the float layers' weights alone (its WeightBiasQuantization would put the float
    # depthwise on per-tensor int8 weights: about 0.3 x the quantization error on this net)
    assert check.relative < 0.01


def _table(model: torch.nn.Module) -> LayerLatencyTable:
    names = layer_names(model, SHAPE)
    # int8 1 ms per layer; keeping layer i fp32 costs i * 0.1 ms more (later layers are dearer)
    return LayerLatencyTable(tuple(names), tuple(1.0 for _ in names), tuple(1.0 + 0.1 * i for i in range(len(names))),
                             "test numbers")


def test_latency_mode_stays_within_the_budget_and_is_deterministic() -> None:
    model = tiny_model()
    table = _table(model)
    names = table.layers
    assert predicted_ms(table, names, single_fp32_policy(names, None)) == pytest.approx(len(names))
    budget = len(names) + 0.65  # room for e.g. layers 1, 2 and 3 fp32 (0.6 ms), not for the last one alone (0.8+)
    kwargs = {"calibration": batches(1), "latency_budget_ms": budget, "layer_cost": table, "episodes": 6,
              "config": HaqConfig(warmup_episodes=3, batch_size=16)}
    policy, report = search_quant_policy(model, _output_agreement(model), seed=4, **kwargs)
    again, report_again = search_quant_policy(model, _output_agreement(model), seed=4, **kwargs)
    assert policy == again and report["episodes"] == report_again["episodes"]
    assert all(episode["resource"] <= budget for episode in report["episodes"])
    assert predicted_ms(table, names, policy) <= budget
    assert {bits for bits in policy.layers.values()} == {(8, 8)}  # named layers are int8, the rest fp32
    assert names[-1] in policy.layers  # the dearest layer never fits kept fp32
    assert report["budget"]["kind"] == "latency_ms" and report["budget"]["cost_source"].startswith("predicted")
    assert report["episodes"][-1]["critic_loss"] is not None


def test_a_budget_below_all_int8_names_the_budget_and_the_minimum() -> None:
    model = tiny_model()
    table = _table(model)
    with pytest.raises(UserError, match=r"latency_budget_ms=5 is below the minimum 11 ms \(every layer int8"):
        search_quant_policy(model, _output_agreement(model), calibration=batches(1), latency_budget_ms=5.0,
                            layer_cost=table, episodes=1)
    with pytest.raises(UserError, match="latency_budget_ms and layer_cost go together"):
        search_quant_policy(model, _output_agreement(model), calibration=batches(1), latency_budget_ms=5.0, episodes=1)


def test_table_round_trips_and_refuses_another_model(tmp_path) -> None:
    model = tiny_model()
    table = _table(model)
    table.save(tmp_path / "table.json")
    assert LayerLatencyTable.load(tmp_path / "table.json") == table
    assert table.layer_ms(2, "fp32") == pytest.approx(1.2)
    (tmp_path / "other.json").write_text('{"layers": []}')
    with pytest.raises(InputFileError, match="schema must be 'hwnas-haq-layer-latency'"):
        LayerLatencyTable.load(tmp_path / "other.json")
    shorter = LayerLatencyTable(table.layers[:2], (1.0, 1.0), (1.0, 1.0))
    with pytest.raises(UserError, match="build the table for this model"):
        search_quant_policy(model, _output_agreement(model), calibration=batches(1), latency_budget_ms=50.0,
                            layer_cost=shorter, episodes=1)


def test_best_single_fp32_baseline_is_the_most_accurate_layer_that_fits() -> None:
    model = tiny_model()
    table = _table(model)
    budget = len(table.layers) + 0.45  # layers 0..4 fit kept fp32 alone, 5.. do not
    result = latency_baselines(model, _output_agreement(model), calibration=batches(1), layer_cost=table,
                               latency_budget_ms=budget)
    tried = result["best_single_fp32"]["candidates"]
    assert [c["fp32_layer"] for c in tried] == list(table.layers[:5])
    assert result["best_single_fp32"]["accuracy"] == max(c["accuracy"] for c in tried)
    assert result["best_single_fp32"]["accuracy"] >= result["uniform_int8"]["accuracy"]
    assert result["uniform_int8"]["predicted_ms"] == pytest.approx(len(table.layers))


def test_with_the_int8_aware_table_each_block_is_one_decision_and_its_prediction_the_budget() -> None:
    from test_int8_table import int8_table, smallest_arch

    from search_spaces.build import build_model

    table, arch = int8_table(), smallest_arch()  # int8 entries a third of fp32, Q 0.1 / DQ 0.2 ms
    torch.manual_seed(0)
    model = build_model(arch).eval()
    # predicted: all int8 3.367 ms; stem kept fp32 3.884; any other unit kept fp32 >= 4.118
    budget = 4.0
    kwargs = {"calibration": batches(1), "latency_budget_ms": budget, "layer_cost": table, "episodes": 5,
              "config": HaqConfig(warmup_episodes=3, batch_size=8)}
    policy, report = search_quant_policy(model, _output_agreement(model), seed=1, **kwargs)
    assert [layer["name"] for layer in report["layers"]] == ["stem", "blocks.0", "head"]
    assert all(episode["resource"] <= budget for episode in report["episodes"])
    assert {n for n in layer_names(model, SHAPE) if n not in policy.layers} <= {"stem.0.0"}
    assert report["budget"]["cost_source"].startswith("predicted by the int8-aware latency table")
    result = latency_baselines(model, _output_agreement(model), calibration=batches(1), layer_cost=table,
                               latency_budget_ms=budget)
    assert [c["fp32_layer"] for c in result["best_single_fp32"]["candidates"]] == ["stem"]
    assert result["uniform_int8"]["predicted_ms"] == pytest.approx(table.predict_mixed(arch, ["int8"] * 3))
    with pytest.raises(UserError, match=r"latency_budget_ms=3 is below the minimum 3.367 ms \(every layer int8"):
        search_quant_policy(model, _output_agreement(model), calibration=batches(1), latency_budget_ms=3.0,
                            layer_cost=table, episodes=1)


def test_measured_layer_table_charges_each_layer_its_in_context_difference() -> None:
    from compress.haq_measure import measure_layer_table

    model = trained_like(relu_spec())
    table = measure_layer_table(model, batches(1), SHAPE, warmup=1, blocks=2, block_runs=2, retries=0)
    assert table.layers == tuple(layer_names(model, SHAPE))
    # int8_ms are equal shares of the all-int8 measurement, so all-int8 is predicted as measured
    all_int8 = float(table.source.split("all int8 ")[1].split(" ms")[0])
    assert sum(table.int8_ms) == pytest.approx(all_int8, abs=1e-3)
    assert len(set(table.int8_ms)) == 1 and "all fp32 measured" in table.source


def test_a_policy_whose_export_strays_from_fake_quant_is_timed_and_reported_not_raised(monkeypatch) -> None:
    import compress.haq_measure as haq_measure
    from compress.quantize_export import ExportCheck

    model = trained_like(relu_spec())
    names = layer_names(model, SHAPE)
    monkeypatch.setattr(haq_measure, "check_qdq_export", lambda *a, **k: ExportCheck(
        samples=4, max_abs_diff=0.3, mean_abs_diff=0.1, quantization_error=0.2, tolerance=0.5, top1_agreement=0.75))
    measured = haq_measure.measure_policies(model, {"one fp32": single_fp32_policy(names, names[2])}, batches(2), SHAPE,
                                            check_inputs=torch.cat(batches(1, seed=5)), warmup=1, blocks=3,
                                            block_runs=2)
    check = measured["one fp32"]["export_check"]
    assert check["passed"] is False and check["relative"] == pytest.approx(1.5)
    assert measured["one fp32"]["measured_ms"] > 0 and measured["fp32"]["measured_ms"] > 0
