"""How a chosen model shrinks: channel pruning, compound scaling, distillation (and quantization).

Every policy is data (`compress.policy`: one versioned JSON envelope per kind)."""

from compress.compressed_file import CompressedFileError, DecodedModel
from compress.deep_compression import DeepCompressionResult, deep_compress, encode_model, model_from
from compress.distill import DistillationLoss, kd_loss
from compress.haq import HaqConfig, search_quant_policy
from compress.haq_latency import LatencyProblem, LayerLatencyTable, predicted_ms
from compress.haq_measure import latency_baselines, measure_layer_table, measure_policies
from compress.huffman import HuffmanCode, HuffmanError, code_lengths
from compress.lottery import LotteryPlan, Ticket, TicketComparison, compare_tickets, find_tickets, snapshot_after_steps
from compress.lowrank import factorize, factorize_model, svd_factors, tucker2_factors
from compress.lowrank_policy import RankPolicy, energy_policy, latency_policy
from compress.policy import PolicyEnvelope, PolicyError
from compress.prune import (
    CRITERIA,
    PrunePlan,
    PrunePolicy,
    channel_scores,
    plan_prune,
    prunable_units,
    prune,
    prune_model,
    pruned_width,
    select_channels,
)
from compress.prune_search import PruneSearchReport, search_prune_policy
from compress.quantize import (
    QuantConv2d,
    QuantLinear,
    apply_policy,
    calibrate,
    current_policy,
    prepare_qat,
)
from compress.quantize_cost import bitfusion_cost, layer_infos, policy_weight_bits
from compress.quantize_backend import INT8_BACKEND, Int8Measurer, Int8OnnxRuntimeBackend
from compress.quantize_dorefa import dorefa_activation
from compress.quantize_export import check_qdq_export, export_qdq, measure_int8_latency
from compress.quantize_ghost import Int8GhostBottleneck, Int8GhostModule, SharedQuantizer, add_ghost_points
from compress.quantize_graph import Int8PoolHead
from compress.quantize_layer_export import int8_layer_model, int8_network_model, qdq_model
from compress.quantize_policy import QuantPolicy, uniform_policy
from compress.quantize_se import INT8_SE, Int8SqueezeExcite, add_se_points
from compress.quantize_ttq import TTQ_THRESHOLD, ttq_weight
from compress.regularize import bn_l1_penalty, group_lasso_penalty, sparsity_penalty
from compress.scale import (
    CoefficientSearch,
    PhiFit,
    compound_coefficients,
    compound_scale,
    fit_phi_to_budget,
    grid_search_coefficients,
    round_filters,
    round_repeats,
    scale_spec,
    stages,
)
from compress.sparsity import apply_masks, current_masks, magnitude_masks, remove_masks, sparsity_of
from compress.weight_sharing import bits_policy, remove_sharing, share_weights

__all__ = [
    "CRITERIA",
    "CoefficientSearch",
    "CompressedFileError",
    "DecodedModel",
    "DeepCompressionResult",
    "DistillationLoss",
    "HaqConfig",
    "HuffmanCode",
    "HuffmanError",
    "INT8_BACKEND",
    "INT8_SE",
    "Int8GhostBottleneck",
    "Int8GhostModule",
    "Int8Measurer",
    "Int8OnnxRuntimeBackend",
    "Int8PoolHead",
    "Int8SqueezeExcite",
    "LatencyProblem",
    "LayerLatencyTable",
    "LotteryPlan",
    "PhiFit",
    "PolicyEnvelope",
    "PolicyError",
    "PrunePlan",
    "PrunePolicy",
    "PruneSearchReport",
    "QuantConv2d",
    "QuantLinear",
    "QuantPolicy",
    "RankPolicy",
    "SharedQuantizer",
    "TTQ_THRESHOLD",
    "Ticket",
    "TicketComparison",
    "add_ghost_points",
    "add_se_points",
    "apply_masks",
    "apply_policy",
    "bitfusion_cost",
    "bits_policy",
    "bn_l1_penalty",
    "calibrate",
    "channel_scores",
    "check_qdq_export",
    "code_lengths",
    "compare_tickets",
    "compound_coefficients",
    "compound_scale",
    "current_masks",
    "current_policy",
    "deep_compress",
    "dorefa_activation",
    "encode_model",
    "energy_policy",
    "export_qdq",
    "factorize",
    "factorize_model",
    "find_tickets",
    "fit_phi_to_budget",
    "grid_search_coefficients",
    "group_lasso_penalty",
    "int8_layer_model",
    "int8_network_model",
    "kd_loss",
    "latency_baselines",
    "latency_policy",
    "layer_infos",
    "magnitude_masks",
    "measure_int8_latency",
    "measure_layer_table",
    "measure_policies",
    "model_from",
    "plan_prune",
    "policy_weight_bits",
    "predicted_ms",
    "prepare_qat",
    "prunable_units",
    "prune",
    "prune_model",
    "pruned_width",
    "qdq_model",
    "remove_masks",
    "remove_sharing",
    "round_filters",
    "round_repeats",
    "scale_spec",
    "search_prune_policy",
    "search_quant_policy",
    "select_channels",
    "share_weights",
    "snapshot_after_steps",
    "sparsity_of",
    "sparsity_penalty",
    "stages",
    "svd_factors",
    "ttq_weight",
    "tucker2_factors",
    "uniform_policy",
]
