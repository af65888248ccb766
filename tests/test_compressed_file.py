"""The .hwdc file: bit-exact round trip, the stage-by-stage sizes, and one clear error per kind of damage."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from compress.compressed_file import PREAMBLE, CompressedFileError, decode, pack, read_header
from compress.dc_sizes import stage_sizes
from compress.deep_compression import deep_compress, model_from
from compress.weight_sharing import bits_policy
from search_spaces import ArchSpec, BlockSpec, HeadSpec, Op, StemSpec, build_model

SPEC = ArchSpec(StemSpec(8), (BlockSpec(Op.MBCONV, 16, stride=2, expand_ratio=2),), HeadSpec(conv_channels=32, dropout=0.0),
                resolution=8, num_classes=4)


@pytest.fixture(scope="module")
def compressed():
    torch.manual_seed(0)
    model = build_model(SPEC)
    return deep_compress(model, SPEC, 0.75, bits_policy(model, 4, fc_bits=3))


def _parts(data: bytes) -> tuple[dict, bytes]:
    length = struct.unpack_from("<I", data, 8)[0]
    return json.loads(zlib.decompress(data[PREAMBLE.size:PREAMBLE.size + length])), data[PREAMBLE.size + length:]


def test_decoding_gives_the_models_weights_bit_for_bit(compressed):
    decoded = decode(compressed.data)
    assert decoded.arch == SPEC
    state = compressed.model.state_dict()
    assert list(decoded.tensors) == list(build_model(SPEC).state_dict())  # the plain network's order
    assert set(state) == set(decoded.tensors)
    for name, tensor in state.items():
        assert decoded.tensors[name].tobytes() == tensor.numpy().tobytes(), name
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(model_from(decoded)(images), compressed.model(images))


def test_sizes_stage_by_stage_add_up(compressed):
    header, _ = read_header(compressed.data)
    fp32, pruned, clustered, huffman = stage_sizes(header, len(compressed.data))
    layers = [e for e in header["tensors"] if e["kind"] == "clustered"]
    sizes = [int(np.prod(e["shape"])) for e in layers]
    assert fp32.parts["weights"] == 4 * sum(sizes)
    assert [e["count"] for e in layers] == [n - round(0.75 * n) for n in sizes]  # each layer pruned to 75%
    assert pruned.parts["values"] == 4 * sum(n - round(0.75 * n) for n in sizes)
    # stem, expand, depthwise, project, head conv at 4 bits; the classifier at 3
    assert clustered.parts["codebooks"] == 4 * (5 * 2 ** 4 + 2 ** 3)
    assert huffman.total == len(compressed.data)
    assert fp32.total > pruned.total > clustered.total


def _rewrite(data: bytes, edit) -> bytes:
    header, payload = _parts(data)
    edit(header)
    return pack(header, payload)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-5], "payload_bytes .* the file holds .* truncated, or the header lies about lengths"),
    (lambda d: d[:10], "truncated: 10 bytes, shorter than the 16-byte preamble"),
    (lambda d: b"PK\x03\x04" + d[4:], "wrong magic bytes .* not a hwnas deep-compression file"),
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "header CRC-32 mismatch"),
    (lambda d: d[:-3] + bytes([d[-3] ^ 0x40]) + d[-2:], "payload SHA-256 mismatch"),
    (lambda d: _rewrite(d, lambda h: h.update(schema_version=2)), "unknown schema_version 2: this version reads 1"),
    (lambda d: _rewrite(d, lambda h: h.update(schema="onnx")), "header schema 'onnx': expected 'hwnas-deep-compression'"),
    (lambda d: _rewrite(d, lambda h: h.update(arch={"blocks": 3})), "header field 'arch' is not a valid ArchSpec"),
    (lambda d: _rewrite(d, lambda h: h["tensors"][0].update(index_bytes=10**9)),
     "tensor 'stem.0.0.weight': field 'index_bytes' = 1000000000, expected an integer"),
    (lambda d: _rewrite(d, lambda h: h["tensors"][0].update(shape=[1 << 20, 1 << 20])),
     "tensor 'stem.0.0.weight': field 'shape' = .* at most 268435456 elements"),
    (lambda d: _rewrite(d, lambda h: h["tensors"][0].update(bits=9)), "field 'bits' = 9, expected an integer 1..8"),
    (lambda d: _rewrite(d, lambda h: h["tensors"][0].update(shape=[4, 3, 3, 3])),
     r"tensor 'stem.0.0.weight': shape \[4, 3, 3, 3\] in the file, the header's arch needs \[8, 3, 3, 3\]"),
])
def test_damage_is_one_clear_error(compressed, damage, message):
    with pytest.raises(CompressedFileError, match=message) as caught:
        decode(damage(compressed.data), "m.hwdc")
    assert str(caught.value).startswith("m.hwdc: ") and "\n" not in str(caught.value)


def test_a_header_lying_about_a_stream_is_caught_while_decoding(compressed):
    def lie(header):  # one kept weight fewer: the index stream then has bits left over
        header["tensors"][0]["count"] -= 1
    with pytest.raises(CompressedFileError, match=r"tensor 'stem.0.0.weight': bitstream: \d+ bits left over"):
        decode(_rewrite(compressed.data, lie))
    assert np.isfinite(decode(compressed.data).tensors["stem.0.0.weight"]).all()
