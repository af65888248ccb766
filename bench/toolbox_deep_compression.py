"""Deep Compression (Han et al., ICLR 2016) on the toolbox's trained base: magnitude pruning, trained
weight sharing and Huffman coding, each compression step followed by the project's distilled
fine-tune, written to our .hwdc file and decoded again (bit-exact) before the last evaluation.

Each setting reports the paper's stage-by-stage table: fp32 -> pruned (float32 values + relative
-index gaps) -> clustered (b-bit indices + codebooks) -> Huffman (the actual file), with the test
accuracy after each stage, the ratio of the whole file and of the conv/FC weights alone (the
paper's measure; batch norm and biases stay float32 and are not compressed at all).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bench.toolbox_context import ToolboxContext
from compress.dc_sizes import STAGES
from compress.deep_compression import deep_compress
from compress.weight_sharing import bits_policy

# (sparsity, conv bits, FC bits). The first toolbox run pruned every layer (0.7 and 0.8, one
# fine-tune epoch of 80 batches per stage) and lost 12.6 and 24.7 points: right after pruning the
# network was at chance. A compact MobileNet's depthwise kernels (9 weights a channel) and stem
# hold 6% of the weights and carry far more per weight than AlexNet's, so here only the 1x1 convs
# and the classifier (94% of the weights) are pruned, and each stage is fine-tuned longer.
SETTINGS = ((0.6, 5, 5), (0.75, 4, 4))
FINETUNE_EPOCHS = 3
MAX_LOSS_POINTS = 1.0
# which accuracy stands for each stage: the fine-tuned one where the stage is fine-tuned
STAGE_ACCURACY = {"fp32": "base", "pruned": "pruned_finetuned", "clustered": "clustered_finetuned",
                  "huffman": "decoded_file"}


def pointwise_layers(model: nn.Module) -> list[str]:
    """The 1x1 dense convs and linears: what this study prunes."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)]


def run(ctx: ToolboxContext, settings: tuple[tuple[float, int, int], ...] = SETTINGS) -> dict[str, Any]:
    results = []
    epochs = max(ctx.finetune_epochs, FINETUNE_EPOCHS)
    for sparsity, conv_bits, fc_bits in settings:
        base = ctx.fresh_base()
        layers = dict.fromkeys(pointwise_layers(base), sparsity)
        result = deep_compress(base, ctx.spec, layers, bits_policy(base, conv_bits, fc_bits=fc_bits),
                               finetune=lambda model, stage: ctx.finetune(model, epochs).test_accuracy,
                               evaluate=ctx.test_accuracy, base_accuracy=ctx.base_accuracy)
        name = f"dc_s{sparsity:g}_c{conv_bits}_f{fc_bits}.hwdc"
        ctx.out.mkdir(parents=True, exist_ok=True)
        (ctx.out / name).write_bytes(result.data)
        metrics = result.metrics()
        loss = 100 * (ctx.base_accuracy - metrics["accuracy"]["decoded_file"])
        results.append({"sparsity_target": sparsity, "conv_bits": conv_bits, "fc_bits": fc_bits, "file": name,
                        "loss_points": loss, **metrics})
    within = [r for r in results if r["loss_points"] <= MAX_LOSS_POINTS]
    chosen = max(within, key=lambda r: r["compression_vs_fp32"]) if within else None
    return {"base_accuracy": ctx.base_accuracy, "finetune_epochs": epochs, "pruned_layers": "1x1 convs and linears",
            "max_batches_per_epoch": ctx.config.max_batches_per_epoch, "results": results,
            "chosen": results.index(chosen) if chosen else None}


def render(result: dict[str, Any]) -> list[str]:
    chosen = result["chosen"]
    pick = (f"The smallest file within {MAX_LOSS_POINTS:g} point of the base is setting {chosen + 1}."
            if chosen is not None else f"No setting stayed within {MAX_LOSS_POINTS:g} point of the base.")
    lines = [
        f"Deep Compression (Han et al., ICLR 2016) of the base (test accuracy {100 * result['base_accuracy']:.2f}%): "
        "per-layer magnitude pruning of the 1x1 convs and the classifier (depthwise convs and the stem stay dense), "
        "fine-tune with the masks kept; k-means weight sharing (linear init), "
        f"fine-tune of the centroids; Huffman-coded .hwdc file, decoded bit-exactly before the last evaluation. "
        f"{result['finetune_epochs']} distilled fine-tune epochs after each step"
        + (f" (at most {result['max_batches_per_epoch']} batches each)" if result["max_batches_per_epoch"] else "")
        + f". Batch norm and biases stay float32. {pick}",
        "",
        "| setting | stage | bytes | vs fp32 | test acc. | where the bytes go |",
        "|---|---|---:|---:|---:|---|",
    ]
    for i, r in enumerate(result["results"], start=1):
        label = f"{i}: sparsity {r['sparsity_target']:g}, conv {r['conv_bits']} / FC {r['fc_bits']} bits"
        for stage, size in zip(STAGES, r["sizes"]):
            accuracy = r["accuracy"].get(STAGE_ACCURACY[stage])
            parts = ", ".join(f"{name} {value:,}" for name, value in size["parts"].items())
            lines.append(f"| {label if stage == 'fp32' else ''} | {stage} | {size['bytes']:,} | "
                         f"{size['ratio_vs_fp32']:.1f}x | {100 * accuracy:.2f}% | {parts} |")
        lines.append(f"| | conv/FC weights alone | | {r['weight_compression_vs_fp32']:.1f}x | | "
                     f"sparsity {r['sparsity']:.3f}, loss {r['loss_points']:+.2f} points |")
    return lines
