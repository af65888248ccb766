"""Canonical Huffman codes and relative indexing: textbook lengths, canonical codes, bit-exact round trips."""

import numpy as np
import pytest

from compress.huffman import HuffmanCode, HuffmanError, code_lengths
from compress.relative_index import best_gap_bits, decode_gaps, encode_gaps, entry_count


def test_code_lengths_of_the_textbook_example():
    # CLRS 16.3: f:45 c:12 d:13 e:16 a:5 b:9 -> f 1 bit, c d e 3 bits, a b 4 bits
    assert code_lengths({0: 5, 1: 9, 2: 12, 3: 13, 4: 16, 5: 45}) == {0: 4, 1: 4, 2: 3, 3: 3, 4: 3, 5: 1}
    assert code_lengths({7: 3}) == {7: 1}


def test_canonical_codes_are_consecutive_within_a_length():
    code = HuffmanCode.from_lengths({0: 4, 1: 4, 2: 3, 3: 3, 4: 3, 5: 1})
    assert code.codes() == {5: (0b0, 1), 2: (0b100, 3), 3: (0b101, 3), 4: (0b110, 3), 0: (0b1110, 4), 1: (0b1111, 4)}


def test_encode_packs_bits_most_significant_first():
    code = HuffmanCode.from_lengths({0: 1, 1: 2, 2: 2})  # 0 -> 0, 1 -> 10, 2 -> 11
    data, nbits = code.encode(np.array([1, 0, 2, 2]))
    assert (data, nbits) == (bytes([0b10011110]), 7)
    assert code.decode(data, nbits, 4).tolist() == [1, 0, 2, 2]


def test_round_trip_is_exact_on_a_skewed_stream():
    symbols = np.random.default_rng(0).geometric(0.3, size=5000) % 32
    code = HuffmanCode.from_symbols(symbols)
    data, nbits = code.encode(symbols)
    assert nbits == code.bit_count(symbols) < 5 * symbols.size  # below the 5-bit fixed width
    assert np.array_equal(code.decode(data, nbits, symbols.size), symbols)


def test_bad_tables_and_streams_are_refused():
    with pytest.raises(HuffmanError, match="Kraft"):
        HuffmanCode.from_lengths({0: 1, 1: 1, 2: 2})
    code = HuffmanCode.from_lengths({0: 1, 1: 2, 2: 2})
    with pytest.raises(HuffmanError, match="ended after 2 of 3 symbols"):
        code.decode(bytes([0b10000000]), 3, 3)  # 10 0 -> symbols 1, 0 and no bits for a third
    with pytest.raises(HuffmanError, match="2 bits left over"):
        code.decode(bytes([0b00000000]), 4, 2)
    with pytest.raises(HuffmanError, match="match no code"):
        HuffmanCode.from_lengths({4: 1}).decode(bytes([0b10000000]), 1, 1)


def test_relative_index_uses_fillers_for_long_gaps():
    # 2-bit gaps (max 3): positions 0, 1, 9 -> gaps 1, 1, 8 = filler(3) filler(3) 2
    symbols = encode_gaps(np.array([0, 1, 9]), 2)
    assert symbols.tolist() == [1, 1, 0, 0, 2]
    assert decode_gaps(symbols, 2, numel=10).tolist() == [0, 1, 9]
    assert entry_count(np.array([0, 1, 9]), 2) == 5


def test_best_gap_bits_follows_the_density():
    every_fifth = np.arange(0, 10_000, 5)
    assert best_gap_bits(every_fifth) == 3  # gaps of 5 fit in 3 bits with no filler
    assert best_gap_bits(np.arange(100)) == 1
