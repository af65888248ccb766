"""Relative indexing of a sparse tensor's kept positions (Deep Compression, Han et al., ICLR 2016,
section 2 and figure 2): store the gap to the previous kept weight in `b` bits, not the position.

Our variant: with M = 2^b - 1, a gap g (>= 1; the first is counted from position -1) becomes
(g - 1) // M filler symbols 0, each meaning "skip M positions, no weight here", then g - n*M in
1..M. The paper's filler is a stored zero *weight*, which would need a zero in every codebook and
an index per filler; ours carries no weight, so fillers cost only their gap symbol.

Which b: the one that minimises b x (gaps + fillers) for each tensor, searched over 1..8 (the
paper fixes 8 bits for conv and 5 for FC layers at its sparsities). A small b wastes fillers on
long gaps, a large b wastes bits on short ones; the best b follows the tensor's density (about 3-4
bits at 80% sparsity). Stage 3 Huffman-codes these symbols, so b there only sets the alphabet.
"""

from __future__ import annotations

import numpy as np

from search_spaces.errors import UserError

MAX_GAP_BITS = 8


class RelativeIndexError(UserError, ValueError):
    """Gap symbols that do not describe positions inside the tensor."""


def gaps(positions: np.ndarray) -> np.ndarray:
    """Distances between consecutive kept positions (sorted, flat), the first from -1."""
    positions = np.asarray(positions, dtype=np.int64)
    return np.diff(positions, prepend=-1)


def encode_gaps(positions: np.ndarray, gap_bits: int) -> np.ndarray:
    """Symbols in [0, 2^gap_bits): fillers (0) and gaps 1..2^gap_bits-1, in position order."""
    if not 1 <= gap_bits <= MAX_GAP_BITS:
        raise RelativeIndexError(f"gap_bits={gap_bits}: expected 1..{MAX_GAP_BITS}")
    g = gaps(positions)
    if g.size and g.min() < 1:
        raise RelativeIndexError("positions must be strictly increasing and >= 0")
    span = (1 << gap_bits) - 1
    fillers = (g - 1) // span
    last = g - fillers * span
    out = np.zeros(int(fillers.sum()) + g.size, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1  # where each real gap lands; fillers before it stay 0
    out[ends] = last
    return out


def decode_gaps(symbols: np.ndarray, gap_bits: int, numel: int) -> np.ndarray:
    """Kept positions from `encode_gaps`' symbols; they must end on a weight, inside `numel`."""
    symbols = np.asarray(symbols, dtype=np.int64)
    span = (1 << gap_bits) - 1
    if symbols.size and (symbols.min() < 0 or symbols.max() > span):
        raise RelativeIndexError(f"gap symbols outside 0..{span}")
    if symbols.size and symbols[-1] == 0:
        raise RelativeIndexError("gap symbols end with a filler (no weight after it)")
    steps = np.where(symbols == 0, span, symbols)
    walked = np.cumsum(steps) - 1
    positions = walked[symbols != 0]
    if positions.size and positions[-1] >= numel:
        raise RelativeIndexError(f"gaps reach position {int(positions[-1])} of a tensor of {numel} weights")
    return positions


def entry_count(positions: np.ndarray, gap_bits: int) -> int:
    """Gap symbols (weights + fillers) at this width."""
    span = (1 << gap_bits) - 1
    g = gaps(positions)
    return int(g.size + ((g - 1) // span).sum())


def best_gap_bits(positions: np.ndarray) -> int:
    """The width in 1..8 with the fewest gap bits (ties: the smaller width)."""
    return min(range(1, MAX_GAP_BITS + 1), key=lambda b: (b * entry_count(positions, b), b))
