"""The pieces of `bench.compression`: the base network and its experiments (quantization, pruning; int8 latency is `bench.int8`). Each experiment returns plain,
JSON-serialisable dicts; compression.py renders them."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from compress import (
    DistillationLoss,
    PrunePolicy,
    QuantPolicy,
    bitfusion_cost,
    current_policy,
    layer_infos,
    policy_weight_bits,
    prepare_qat,
    prune,
    search_quant_policy,
    uniform_policy,
)
from compress.quantize_cost import LayerInfo
from compress.scale import scale_spec
from bench.report import omit
from nas.training import DataSplits, TrainConfig, distilled_finetune, evaluate, recipe, train
from predictors.cost import count
from predictors.latency import LocalMeasurer, MeasureSettings
from search_spaces import small_input, zoo
from search_spaces.build import build_model
from search_spaces.spec import ArchSpec

logger = logging.getLogger("bench.compression")
EVAL_BATCH = 64  # per-image CPU cost of these small nets grows with batch (cache); 64 was fastest measured


def cifar_mobilenet_v2(width: float, resolution: int, num_classes: int) -> ArchSpec:
    """Zoo MobileNetV2 at `width` (scale_spec: channels and the 1280 head conv rounded to multiples
    of 8), then the small-input rule (`search_spaces.small_input`): at 32 px the stem and the first
    stride-2 block keep stride 1, so it ends in a 4x4 map (8x down-sampling, as CIFAR MobileNetV2
    variants) instead of 1x1."""
    spec = zoo.get("mobilenet_v2", resolution, num_classes)
    spec = scale_spec(spec, width) if width != 1.0 else spec  # scale first: stages() splits on strides
    return small_input(spec).replace(name=f"mobilenet_v2_w{width:g}_r{resolution}_small_input")


def add_base_arguments(parser: argparse.ArgumentParser) -> None:
    """The base network and its fp32 recipe, shared by `bench.compression` and `bench.toolbox`."""
    add = parser.add_argument
    add("--data", default="cifar10:/work/shared/data/cifar10_subset.npz")
    add("--width", type=float, default=0.5, help="MobileNetV2 width multiplier of the base model.")
    add("--epochs", type=int, default=8, help="fp32 training epochs of the base model.")
    add("--lr", type=float, default=0.05, help="SGD (Nesterov) learning rate of the base model, cosine.")
    add("--batch-size", type=int, default=64)


def test_accuracy(model: nn.Module, data: DataSplits, device: str) -> float:
    return evaluate(model, data.test, batch_size=EVAL_BATCH, device=device)


def _weight_bits_string(policy: QuantPolicy, infos: Sequence[LayerInfo]) -> str:
    # activations are 8 everywhere here (size-constrained HAQ), so the weights tell the policy apart;
    # execution order, not the policy's key order (a policy read back from JSON has its keys sorted)
    return "".join(str(policy.layers[info.name].weight_bits) for info in infos)


def quantization(base: nn.Module, data: DataSplits, config: TrainConfig, *, qat_epochs: int, episodes: int,
                 calibration_batches: int, finetune_batches: int, haq_val: int, seed: int
                 ) -> tuple[dict[str, Any], nn.Module]:
    """Uniform w4a8 and HAQ (budget = w4a8's weight bits) with the same QAT; w8a8 calibrated only.
    Returns the results and the calibrated w8a8 model (for the int8 latency part)."""
    calibration = data.calibration_batches(seed, images=64 * calibration_batches)
    infos = layer_infos(base, (1, *calibration[0].shape[1:]))
    uniform4, uniform8 = uniform_policy(base, 4, 8), uniform_policy(base, 8, 8)
    budget = policy_weight_bits(base, uniform4)
    # a random val subset: the split is grouped by class, so a prefix would hold one or two classes
    pick = torch.randperm(len(data.val), generator=torch.Generator().manual_seed(seed))[:haq_val]
    haq_data = replace(data, val=TensorDataset(*(t[pick] for t in data.val.tensors)))

    def reward_accuracy(qmodel: nn.Module) -> float:
        # search_quant_policy hands over a calibrated copy; it also calls this once on the float
        # model for its reward baseline, which must not be fine-tuned (current_policy is empty)
        if finetune_batches and len(current_policy(qmodel)):
            short = recipe("finetune", config, epochs=1, max_batches_per_epoch=finetune_batches)
            return train(qmodel, haq_data, short, teacher=base, distill_loss=DistillationLoss()).val_accuracy
        return evaluate(qmodel, haq_data.val, batch_size=EVAL_BATCH, device=config.device)

    start = time.perf_counter()
    haq, search = search_quant_policy(base, reward_accuracy, calibration=calibration, budget_weight_bits=budget,
                                      episodes=episodes, seed=seed)
    search_s = time.perf_counter() - start
    if policy_weight_bits(base, haq) > budget:  # the search's contract; a benchmark must not trust silently
        raise AssertionError(f"HAQ policy has {policy_weight_bits(base, haq)} weight bits > budget {budget}")
    rows: dict[str, dict[str, Any]] = {"fp32": {
        "weight_bits": policy_weight_bits(base, QuantPolicy({})), "test_accuracy_ptq": None,
        "test_accuracy": test_accuracy(base, data, config.device), "bitfusion_cycles": None, "bits": None}}
    for label, policy, epochs in (("uniform w4a8", uniform4, qat_epochs), ("HAQ mixed w, a8", haq, qat_epochs),
                                  ("uniform w8a8", uniform8, 0)):
        start = time.perf_counter()
        qmodel = prepare_qat(base, policy, calibration=calibration)
        ptq = test_accuracy(qmodel, data, config.device)
        report = distilled_finetune(qmodel, base, data, config, epochs=epochs) if epochs else None
        rows[label] = {
            "weight_bits": policy_weight_bits(base, policy), "bits": _weight_bits_string(policy, infos),
            "bitfusion_cycles": bitfusion_cost(infos, policy).cycles,
            "test_accuracy_ptq": ptq, "test_accuracy": report.test_accuracy if report else None,
            "qat_epochs": epochs, "qat": report.to_dict() if report else None, "wall_s": time.perf_counter() - start,
        }
        logger.info("%s: %d weight bits, test acc %.4f after calibration, %s after QAT", label,
                    rows[label]["weight_bits"], ptq, rows[label]["test_accuracy"])
    summary = {"budget_weight_bits": budget, "episodes": episodes, "search_s": search_s,
               "per_episode_s": search_s / episodes,
               "reward": {"val_images": len(haq_data.val), "finetune_batches": finetune_batches},
               "calibration_images": sum(len(b) for b in calibration), "rows": rows,
               # per-layer listings left out: the bit strings carry the policies
               "search": {**omit(search, "layers"), "episodes": [omit(e, "policy") for e in search["episodes"]]}}
    return summary, qmodel.eval()  # the loop's last model: w8a8, calibrated


def pruning(spec: ArchSpec, base: nn.Module, data: DataSplits, config: TrainConfig, *, ratios: Sequence[float],
            epochs: int, round_to: int, backends: Sequence[str], measure: MeasureSettings) -> dict[str, Any]:
    """Uniform l1 channel pruning per ratio: MACs/params from `count`, latency of the unpruned and
    every pruned spec in ONE `measure_archs` call per backend (all interleaved, so drift of a shared
    machine hits them alike), test accuracy before and after a distilled fine-tune."""
    state = {key: value.detach().cpu().clone() for key, value in base.state_dict().items()}
    pruned = [(ratio, *prune(spec, PrunePolicy.uniform(spec, ratio, "l1", round_to=round_to), state))
              for ratio in ratios]
    specs = [spec, *(pruned_spec for _, pruned_spec, _ in pruned)]
    latency: dict[str, list[dict[str, float]]] = {}
    for backend in backends:
        measured = LocalMeasurer(backend, threads=1, settings=measure).measure_archs(specs)
        latency[backend] = [m.to_dict() for m in measured]
        logger.info("%s latency (unpruned, %s): %s ms", backend, ", ".join(map(str, ratios)),
                    ", ".join(f"{m.median_ms:.3f}" for m in measured))
    base_cost = count(spec)
    rows = [{"ratio": 0.0, "params": base_cost.params, "macs": base_cost.macs,
             "test_accuracy_before_finetune": None, "test_accuracy": test_accuracy(base, data, config.device)}]
    for ratio, pruned_spec, pruned_state in pruned:
        start = time.perf_counter()
        model = build_model(pruned_spec)
        model.load_state_dict(pruned_state, strict=True)
        cost = count(pruned_spec)
        before = test_accuracy(model, data, config.device)
        report = distilled_finetune(model, base, data, config, epochs=epochs) if epochs else None
        rows.append({"ratio": ratio, "params": cost.params, "macs": cost.macs, "test_accuracy_before_finetune": before,
                     "test_accuracy": report.test_accuracy if report else before,
                     "blocks": [b.to_string() for b in pruned_spec.blocks], "wall_s": time.perf_counter() - start})
        logger.info("prune %.2f: MACs %d -> %d, test acc %.4f -> %.4f", ratio, base_cost.macs, cost.macs, before,
                    rows[-1]["test_accuracy"])
    for index, row in enumerate(rows):
        row["macs_reduction"] = 1 - row["macs"] / base_cost.macs
        row["latency_ms"] = {backend: latency[backend][index] for backend in backends}
        row["latency_reduction"] = {backend: 1 - latency[backend][index]["median_ms"] / latency[backend][0]["median_ms"]
                                    for backend in backends}
    return {"finetune_epochs": epochs, "round_to": round_to, "criterion": "l1", "rows": rows}


def plot_pruning(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Latency reduction vs MACs reduction per backend; the diagonal is 'latency follows MACs'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    x = [100 * row["macs_reduction"] for row in rows]
    for backend in rows[0]["latency_reduction"]:
        ax.plot(x, [100 * row["latency_reduction"][backend] for row in rows], "o-", label=backend)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8, label="latency ∝ MACs")
    ax.set(xlabel="MACs reduction (%)", ylabel="measured latency reduction (%)", xlim=(0, 100), ylim=(-10, 100),
           title="Uniform l1 pruning, 1 thread, batch 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

