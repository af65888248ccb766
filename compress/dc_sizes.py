"""Model size after each Deep Compression stage, read off a .hwdc header (the paper's table 1-4
columns: Han et al., ICLR 2016): where the bits go, stage by stage.

    fp32         every tensor dense float32 (int64 BN counters at 8 bytes)
    pruned       kept weights as float32 values + relative-index gaps at `gap_bits` fixed width
    clustered    kept weights as `bits`-bit cluster indices + gaps + float32 codebooks
    huffman      the file itself: Huffman-coded indices and gaps, codebooks, dense parts, header

Biases, batch norm and any unclustered tensor stay float32 ("dense") in every stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from compress.compressed_file import PREAMBLE

STAGES = ("fp32", "pruned", "clustered", "huffman")


@dataclass(frozen=True)
class StageSize:
    stage: str
    parts: dict[str, int]  # bytes: weights | values | indices | gaps | codebooks | dense | header

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def to_dict(self, fp32_bytes: int) -> dict[str, Any]:
        return {"stage": self.stage, "bytes": self.total, "ratio_vs_fp32": fp32_bytes / self.total if self.total else None,
                "parts": dict(self.parts)}


def _bytes(bits: int) -> int:
    return (bits + 7) // 8


def stage_sizes(header: dict[str, Any], file_bytes: int) -> list[StageSize]:
    """The four stages of the model a (checked) header describes; `file_bytes`: the file's size."""
    clustered = [t for t in header["tensors"] if t["kind"] == "clustered"]
    dense = sum(t["bytes"] for t in header["tensors"] if t["kind"] == "dense")
    gaps = sum(_bytes(t["entries"] * t["gap_bits"]) for t in clustered)
    codebooks = sum(t["codebook_bytes"] for t in clustered)
    huffman = {"indices": sum(t["index_bytes"] for t in clustered), "gaps": sum(t["gap_bytes"] for t in clustered),
               "codebooks": codebooks, "dense": dense}
    huffman["header"] = file_bytes - sum(huffman.values())
    assert huffman["header"] >= PREAMBLE.size, "file_bytes is not the size of this header's file"
    return [
        StageSize("fp32", {"weights": sum(4 * math.prod(t["shape"]) for t in clustered), "dense": dense}),
        StageSize("pruned", {"values": sum(4 * t["count"] for t in clustered), "gaps": gaps, "dense": dense}),
        StageSize("clustered", {"indices": sum(_bytes(t["count"] * t["bits"]) for t in clustered), "gaps": gaps,
                                "codebooks": codebooks, "dense": dense}),
        StageSize("huffman", huffman),
    ]


def size_table(stages: list[StageSize]) -> list[str]:
    """Markdown rows: stage, bytes, ratio vs fp32, and the bytes of each part."""
    fp32 = stages[0].total
    lines = ["| stage | bytes | vs fp32 | where the bytes go |", "|---|---:|---:|---|"]
    for stage in stages:
        parts = ", ".join(f"{name} {size:,}" for name, size in stage.parts.items())
        lines.append(f"| {stage.stage} | {stage.total:,} | {fp32 / stage.total:.1f}x | {parts} |")
    return lines
