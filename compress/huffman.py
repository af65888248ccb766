"""Canonical Huffman codes over small integer alphabets, bit-packed to bytes (stage 3 of Deep
Compression, Han et al., ICLR 2016, section 4: cluster indices and sparse-index gaps).

A canonical code is fixed by its code lengths alone: symbols sorted by (length, symbol) get
consecutive code values, shifted left whenever the length grows. So a file stores only
``[[symbol, length], ...]`` and the decoder rebuilds the same codes. Bits are written most
significant first and packed with `numpy.packbits` (the last byte padded with zeros); the exact
bit count travels beside the bytes.

    code = HuffmanCode.from_symbols(symbols)
    data, nbits = code.encode(symbols)
    assert (code.decode(data, nbits, len(symbols)) == symbols).all()

`decode` trusts nothing: a table that is not a prefix code, a bit pattern with no symbol, a
stream that ends mid-symbol or has bits left over are each a `HuffmanError`.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces.errors import UserError

MAX_CODE_LENGTH = 64  # lengths past this would need more than 2^64 symbols to arise


class HuffmanError(UserError, ValueError):
    """A code table or bitstream that cannot be decoded; the message says what is wrong."""


def code_lengths(frequencies: Mapping[int, int]) -> dict[int, int]:
    """Huffman code length of every symbol with a positive count (one symbol alone: length 1)."""
    used = sorted((int(s), int(n)) for s, n in frequencies.items() if n > 0)
    if not used:
        return {}
    if len(used) == 1:
        return {used[0][0]: 1}
    # heap of (count, tie-break, symbols in the subtree); merging deepens every symbol in both
    heap = [(count, i, [symbol]) for i, (symbol, count) in enumerate(used)]
    heapq.heapify(heap)
    lengths = dict.fromkeys((s for s, _ in used), 0)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for symbol in s1 + s2:
            lengths[symbol] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


@dataclass(frozen=True)
class HuffmanCode:
    lengths: tuple[tuple[int, int], ...]  # (symbol, code length) sorted by (length, symbol)

    @classmethod
    def from_symbols(cls, symbols: np.ndarray) -> HuffmanCode:
        values, counts = np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True)
        return cls.from_lengths(code_lengths(dict(zip(values.tolist(), counts.tolist()))))

    @classmethod
    def from_lengths(cls, lengths: Mapping[int, int] | Sequence[Sequence[int]]) -> HuffmanCode:
        """The canonical code of these lengths, checked: lengths in 1..64, each symbol once, and
        Kraft's sum at most 1 (exactly 1 unless a single symbol), so every bit string decodes."""
        pairs = list(lengths.items()) if isinstance(lengths, Mapping) else [tuple(p) for p in lengths]
        try:
            pairs = [(int(s), int(n)) for s, n in pairs]
        except (TypeError, ValueError):
            raise HuffmanError(f"code table: expected [symbol, length] integer pairs, got {pairs[:3]!r}...") from None
        symbols = [s for s, _ in pairs]
        if len(set(symbols)) != len(symbols):
            raise HuffmanError("code table: a symbol appears twice")
        if any(s < 0 for s in symbols) or any(not 1 <= n <= MAX_CODE_LENGTH for _, n in pairs):
            raise HuffmanError(f"code table: symbols must be >= 0 and lengths in 1..{MAX_CODE_LENGTH}")
        kraft = sum(2 ** (MAX_CODE_LENGTH - n) for _, n in pairs)
        full = 2 ** MAX_CODE_LENGTH
        if kraft > full or (len(pairs) > 1 and kraft != full):
            raise HuffmanError("code table: the lengths do not form a complete prefix code (Kraft sum != 1)")
        return cls(tuple(sorted(pairs, key=lambda p: (p[1], p[0]))))

    def table(self) -> list[list[int]]:
        """[[symbol, length], ...]: all a file needs to rebuild the code."""
        return [list(pair) for pair in self.lengths]

    def codes(self) -> dict[int, tuple[int, int]]:
        """symbol -> (code value, length), assigned canonically."""
        out, code, previous = {}, 0, None
        for symbol, length in self.lengths:
            if previous is not None:
                code = (code + 1) << (length - previous)
            out[symbol] = (code, length)
            previous = length
        return out

    def bit_count(self, symbols: np.ndarray) -> int:
        values, counts = np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True)
        lengths = dict(self.lengths)
        return int(sum(lengths[int(v)] * int(c) for v, c in zip(values, counts)))

    def encode(self, symbols: np.ndarray) -> tuple[bytes, int]:
        """(bit-packed bytes, exact number of bits) of `symbols`, every one of which has a code."""
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        if symbols.size == 0:
            return b"", 0
        codes = self.codes()
        alphabet = np.array(sorted(codes), dtype=np.int64)
        position = np.searchsorted(alphabet, symbols)
        if (position >= alphabet.size).any() or (alphabet[np.minimum(position, alphabet.size - 1)] != symbols).any():
            raise HuffmanError("encode: a symbol has no code in this table")
        values = np.array([codes[int(s)][0] for s in alphabet], dtype=object)[position]
        lengths = np.array([codes[int(s)][1] for s in alphabet], dtype=np.int64)[position]
        if lengths.max() <= 62:  # vectorised: each symbol's bits, most significant first
            values = values.astype(np.int64)
            which = np.repeat(np.arange(symbols.size), lengths)
            offset = np.arange(which.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            bits = (values[which] >> (lengths[which] - 1 - offset)) & 1
        else:  # absurdly skewed counts: plain Python integers
            bits = np.array([int(b) for v, n in zip(values, lengths) for b in format(int(v), f"0{n}b")])
        return np.packbits(bits.astype(np.uint8)).tobytes(), int(bits.size)

    def decode(self, data: bytes, nbits: int, count: int) -> np.ndarray:
        """The `count` symbols in the first `nbits` bits of `data`; every bit must be used."""
        if not 0 <= nbits <= 8 * len(data) or len(data) != (nbits + 7) // 8:
            raise HuffmanError(f"bitstream: {nbits} bits do not fit in {len(data)} bytes")
        if count == 0:
            if nbits:
                raise HuffmanError(f"bitstream: {nbits} bits but no symbols")
            return np.zeros(0, dtype=np.int64)
        if not self.lengths:
            raise HuffmanError("bitstream: symbols to decode but the code table is empty")
        if nbits < count:
            raise HuffmanError(f"bitstream: {nbits} bits cannot hold {count} symbols")
        # canonical decoding: per length, the first code and where its symbols start in order
        first, start, by_length, index, code, previous = {}, {}, {}, 0, 0, None
        for symbol, length in self.lengths:
            if previous is not None:
                code = (code + 1) << (length - previous)
            if length not in first:
                first[length], start[length] = code, index
            by_length[length] = by_length.get(length, 0) + 1
            index, previous = index + 1, length
        ordered = [s for s, _ in self.lengths]
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:nbits].tolist()
        out, value, length, used = [], 0, 0, 0
        max_length = self.lengths[-1][1]
        for used, bit in enumerate(bits, start=1):
            value, length = (value << 1) | bit, length + 1
            if length in first and 0 <= value - first[length] < by_length[length]:
                out.append(ordered[start[length] + value - first[length]])
                value, length = 0, 0
                if len(out) == count:
                    break
            elif length >= max_length:
                raise HuffmanError(f"bitstream: bits {used - length}..{used - 1} match no code")
        if len(out) != count:
            raise HuffmanError(f"bitstream: ended after {len(out)} of {count} symbols")
        if used != nbits:
            raise HuffmanError(f"bitstream: {nbits - used} bits left over after {count} symbols")
        return np.array(out, dtype=np.int64)
