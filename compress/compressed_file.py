"""Our Deep Compression file (``.hwdc``): a pruned, weight-shared, Huffman-coded model in one file.

Layout (little-endian)::

    magic          8 bytes  b"HWDC\\r\\n\\x1a\\n" (PNG-style: text-mode mangling breaks it visibly)
    header_length  uint32   bytes of the stored (compressed) header
    header_crc32   uint32   CRC-32 of those bytes
    header         JSON (UTF-8), below, zlib-compressed: its ~300 entries repeat the same keys, and
                   uncompressed it would be a fifth of a 200 KB model
    payload        the segments the header lists, back to back, no padding

    {"schema": "hwnas-deep-compression", "schema_version": 1, "arch": {ArchSpec},
     "payload_bytes": N, "payload_sha256": "...",
     "tensors": [                                      # state-dict order
       {"name": "blocks.0.conv.weight", "kind": "clustered", "shape": [...], "bits": 5,
        "gap_bits": 4, "count": kept weights, "entries": gap symbols (kept + fillers),
        "codebook_bytes": 4 * 2^bits,                                  # segment 1: float32
        "index_code": [[symbol, length], ...], "index_bits": n, "index_bytes": m,  # segment 2
        "gap_code": [[symbol, length], ...], "gap_stream_bits": n, "gap_bytes": m}, # segment 3
       {"name": "blocks.0.bn.weight", "kind": "dense", "shape": [...], "dtype": "float32",
        "bytes": m}]}                                                  # one segment, raw

Reading trusts nothing and checks, in order: magic, header length against the file, header CRC,
inflating within a size limit, JSON, schema name, schema_version, every field's type and range (shapes bounded before anything is
allocated; lengths consistent with each other), the segments' total against the payload's actual
size, the payload's SHA-256, then each stream as it decodes. Each failure is one line of
`CompressedFileError` naming the file, the tensor and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.huffman import HuffmanCode, HuffmanError
from compress.relative_index import RelativeIndexError, best_gap_bits, decode_gaps, encode_gaps
from compress.weight_sharing import MAX_BITS, ClusteredTensor
from search_spaces.errors import InputFileError, UserError
from search_spaces.spec import ArchSpec, SpecError

MAGIC = b"HWDC\r\n\x1a\n"
PREAMBLE = struct.Struct("<8sII")
SCHEMA = "hwnas-deep-compression"
SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 64 << 20
MAX_NUMEL = 1 << 28  # per tensor: far above any model this project trains, far below a bad allocation
MAX_DIMS = 8
DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}


class CompressedFileError(UserError, ValueError):
    """A .hwdc file that is truncated, corrupt, of another kind or version, or lies in its header."""


@dataclass(frozen=True)
class DecodedModel:
    arch: ArchSpec
    tensors: dict[str, np.ndarray]  # the state dict, in file order
    header: dict[str, Any]


def encode(arch: ArchSpec, clustered: Mapping[str, ClusteredTensor], dense: Mapping[str, np.ndarray],
           order: list[str] | None = None) -> bytes:
    """File bytes for the state dict made of `clustered` and `dense` tensors, in `order` (default:
    clustered then dense). Only float32 and int64 dense tensors."""
    names = order or [*clustered, *dense]
    entries, segments = [], []
    for name in names:
        if name in clustered:
            entry, parts = _encode_clustered(name, clustered[name])
        else:
            array = np.asarray(dense[name])  # not ascontiguousarray: it makes 0-d tensors 1-d
            dtype = next((key for key, value in DTYPES.items() if array.dtype == value), None)
            if dtype is None:
                raise CompressedFileError(f"tensor {name!r}: dtype {array.dtype} cannot be stored; expected {list(DTYPES)}")
            raw = array.astype(DTYPES[dtype]).tobytes()
            entry, parts = {"name": name, "kind": "dense", "shape": list(array.shape), "dtype": dtype,
                            "bytes": len(raw)}, [raw]
        entries.append(entry)
        segments += parts
    payload = b"".join(segments)
    header = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "arch": arch.to_dict(),
              "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(), "tensors": entries}
    return pack(header, payload)


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    """Preamble + header + payload (also what a tool editing the header would write)."""
    raw = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return PREAMBLE.pack(MAGIC, len(raw), zlib.crc32(raw)) + raw + payload


def _encode_clustered(name: str, tensor: ClusteredTensor) -> tuple[dict[str, Any], list[bytes]]:
    gap_bits = best_gap_bits(tensor.positions)
    gap_symbols = encode_gaps(tensor.positions, gap_bits)
    index_code, gap_code = HuffmanCode.from_symbols(tensor.indices), HuffmanCode.from_symbols(gap_symbols)
    index_stream, index_bits = index_code.encode(tensor.indices)
    gap_stream, gap_stream_bits = gap_code.encode(gap_symbols)
    codebook = np.asarray(tensor.codebook, dtype="<f4").tobytes()
    entry = {"name": name, "kind": "clustered", "shape": list(tensor.shape), "bits": tensor.bits,
             "gap_bits": gap_bits, "count": int(tensor.indices.size), "entries": int(gap_symbols.size),
             "codebook_bytes": len(codebook), "index_code": index_code.table(), "index_bits": index_bits,
             "index_bytes": len(index_stream), "gap_code": gap_code.table(), "gap_stream_bits": gap_stream_bits,
             "gap_bytes": len(gap_stream)}
    return entry, [codebook, index_stream, gap_stream]


def write(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.write_bytes(data)
    return path


def read(path: str | Path) -> DecodedModel:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path} does not exist (expected a .hwdc file from `nas compress deep-compression`)")
    return decode(path.read_bytes(), str(path))


def read_header(data: bytes, source: str = "file") -> tuple[dict[str, Any], bytes]:
    """(checked header, payload): everything up to, not including, decoding the streams."""
    def fail(message: str) -> CompressedFileError:
        return CompressedFileError(f"{source}: {message}")

    if len(data) < PREAMBLE.size:
        raise fail(f"truncated: {len(data)} bytes, shorter than the {PREAMBLE.size}-byte preamble")
    magic, length, crc = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise fail(f"wrong magic bytes {magic!r}: not a hwnas deep-compression file (expected {MAGIC!r})")
    if length > MAX_HEADER_BYTES:
        raise fail(f"header_length {length} exceeds the {MAX_HEADER_BYTES}-byte limit; the file is corrupt")
    if PREAMBLE.size + length > len(data):
        raise fail(f"truncated: header_length {length} but only {len(data) - PREAMBLE.size} bytes follow the preamble")
    raw = data[PREAMBLE.size:PREAMBLE.size + length]
    if zlib.crc32(raw) != crc:
        raise fail("header CRC-32 mismatch: the header is corrupt")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_HEADER_BYTES)
    except zlib.error as error:
        raise fail(f"header is not zlib data ({error})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise fail(f"header inflates past the {MAX_HEADER_BYTES}-byte limit or is cut short")
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise fail(f"header is not valid JSON ({error})") from None
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        raise fail(f"header schema {header.get('schema') if isinstance(header, dict) else None!r}: expected {SCHEMA!r}")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise fail(f"unknown schema_version {header.get('schema_version')!r}: this version reads {SCHEMA_VERSION}")
    payload = data[PREAMBLE.size + length:]
    segments = _check_entries(header.get("tensors"), fail)
    declared = _field(header, "payload_bytes", fail, "header")
    if declared != sum(segments) or declared != len(payload):
        raise fail(f"payload_bytes {declared}, tensors' segments add up to {sum(segments)}, the file holds "
                   f"{len(payload)} payload bytes: truncated, or the header lies about lengths")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise fail("payload SHA-256 mismatch: the payload is corrupt")
    return header, payload


def _field(entry: dict[str, Any], key: str, fail: Any, where: str, low: int = 0, high: int | None = None) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise fail(f"{where}: field {key!r} = {value!r}, expected an integer {allowed}")
    return value


def _check_entries(entries: Any, fail: Any) -> list[int]:
    """Segment lengths of every tensor entry, after checking its fields against each other."""
    if not isinstance(entries, list):
        raise fail("header field 'tensors' is not a list")
    segments, names = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or entry["name"] in names:
            raise fail(f"tensors[{i}]: missing or repeated 'name'")
        where = f"tensor {entry['name']!r}"
        names.add(entry["name"])
        shape = entry.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_NUMEL for d in shape)
                or math.prod(shape) > MAX_NUMEL):
            raise fail(f"{where}: field 'shape' = {shape!r}, expected <= {MAX_DIMS} sizes >= 0 with at most {MAX_NUMEL} elements")
        numel = math.prod(shape)
        if entry.get("kind") == "dense":
            if entry.get("dtype") not in DTYPES:
                raise fail(f"{where}: field 'dtype' = {entry.get('dtype')!r}, expected one of {list(DTYPES)}")
            size = numel * DTYPES[entry["dtype"]].itemsize
            _field(entry, "bytes", fail, where, size, size)
            segments.append(size)
        elif entry.get("kind") == "clustered":
            bits = _field(entry, "bits", fail, where, 1, MAX_BITS)
            _field(entry, "gap_bits", fail, where, 1, 8)
            count = _field(entry, "count", fail, where, 0, numel)
            _field(entry, "entries", fail, where, count, count + numel)
            _field(entry, "codebook_bytes", fail, where, 4 << bits, 4 << bits)
            for stream, symbols in (("index", count), ("gap", entry["entries"])):
                nbits = _field(entry, "index_bits" if stream == "index" else "gap_stream_bits", fail, where, symbols,
                               64 * symbols)
                _field(entry, f"{stream}_bytes", fail, where, (nbits + 7) // 8, (nbits + 7) // 8)
                table = entry.get(f"{stream}_code")
                if not isinstance(table, list) or len(table) > (1 << (bits if stream == "index" else entry["gap_bits"])):
                    raise fail(f"{where}: field '{stream}_code' is not a code table of the declared alphabet")
            segments += [entry["codebook_bytes"] + entry["index_bytes"] + entry["gap_bytes"]]
        else:
            raise fail(f"{where}: field 'kind' = {entry.get('kind')!r}, expected 'clustered' or 'dense'")
    return segments


def decode(data: bytes, source: str = "file") -> DecodedModel:
    """The architecture and the exact state dict the file was written from."""
    header, payload = read_header(data, source)
    try:
        arch = ArchSpec.from_dict(header.get("arch"))
    except (SpecError, TypeError, AttributeError, KeyError, ValueError) as error:
        raise CompressedFileError(f"{source}: header field 'arch' is not a valid ArchSpec ({error})") from None
    _check_against_arch(arch, header["tensors"], source)
    tensors, offset = {}, 0
    for entry in header["tensors"]:
        name, shape = entry["name"], tuple(entry["shape"])
        if entry["kind"] == "dense":
            raw = payload[offset:offset + entry["bytes"]]
            tensors[name] = np.frombuffer(raw, dtype=DTYPES[entry["dtype"]]).reshape(shape).copy()
            offset += entry["bytes"]
            continue
        try:
            tensors[name], offset = _decode_clustered(entry, payload, offset)
        except (HuffmanError, RelativeIndexError) as error:
            raise CompressedFileError(f"{source}: tensor {name!r}: {error}") from None
    return DecodedModel(arch, tensors, header)


def _check_against_arch(arch: ArchSpec, entries: list[dict[str, Any]], source: str) -> None:
    """The tensors must be exactly the state dict `arch` builds (bounded first by its closed-form
    parameter count, so a hostile arch cannot make us build a huge model)."""
    import torch

    from predictors.cost import params_of_spec
    from search_spaces.build import build_model

    params = params_of_spec(arch)
    if params > MAX_NUMEL:
        raise CompressedFileError(f"{source}: header field 'arch' has {params:,} parameters, over the {MAX_NUMEL:,} limit")
    with torch.random.fork_rng(devices=[]):
        expected = {name: list(t.shape) for name, t in build_model(arch).state_dict().items()}
    found = {entry["name"]: entry["shape"] for entry in entries}
    for name in [*expected, *found]:
        if expected.get(name) != found.get(name):
            raise CompressedFileError(f"{source}: tensor {name!r}: shape {found.get(name)} in the file, the header's "
                                      f"arch needs {expected.get(name)}")


def _decode_clustered(entry: dict[str, Any], payload: bytes, offset: int) -> tuple[np.ndarray, int]:
    bits, numel = entry["bits"], math.prod(entry["shape"])
    end = offset + entry["codebook_bytes"]
    codebook = np.frombuffer(payload[offset:end], dtype="<f4").copy()
    index_stream = payload[end:end + entry["index_bytes"]]
    end += entry["index_bytes"]
    gap_stream = payload[end:end + entry["gap_bytes"]]
    end += entry["gap_bytes"]
    indices = HuffmanCode.from_lengths(entry["index_code"]).decode(index_stream, entry["index_bits"], entry["count"])
    if indices.size and indices.max() >= (1 << bits):
        raise HuffmanError(f"index_code has symbols outside 0..{(1 << bits) - 1}")
    symbols = HuffmanCode.from_lengths(entry["gap_code"]).decode(gap_stream, entry["gap_stream_bits"], entry["entries"])
    positions = decode_gaps(symbols, entry["gap_bits"], numel)
    if positions.size != entry["count"]:
        raise RelativeIndexError(f"gaps give {positions.size} kept weights, field 'count' says {entry['count']}")
    tensor = ClusteredTensor(tuple(entry["shape"]), bits, codebook, positions, indices)
    return tensor.dense(), end
