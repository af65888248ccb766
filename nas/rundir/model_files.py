"""A model on disk as two plain files: ``arch.json`` (the `ArchSpec`) and ``weights.safetensors``.

Nothing here unpickles: weights are read with safetensors (a JSON header and raw tensor bytes),
the model is rebuilt from the spec with `build_model`, and the state dict is loaded strictly.
TorchScript and ``.pt`` files are pickles in a zip that can run code when loaded, so `load`
refuses them outright; the exporter writes TorchScript but never reads a user's.

Integrity (what `save` writes into the safetensors metadata, all strings)::

    format          "hwnas-weights"
    format_version  "1"
    arch_hash       ArchSpec.content_hash() of the architecture the weights belong to
    arch_name       the spec's label (informational)
    tensor_sha256   JSON object: tensor name -> sha256 of its raw bytes in this file

`load` checks, in order, each failure a `WeightsError` naming the file and the fix:

1. structure: not a pickle/zip, header length within the file, header JSON valid, every tensor's
   byte range inside the data region (a truncated file fails here);
2. arch_hash equals arch.json's content hash (`ArchMismatchError`, naming both hashes);
3. names and shapes equal those of the model arch.json builds (`ArchMismatchError`, listing the
   differing tensors with both shapes);
4. every tensor's sha256 equals the recorded one (flipped bytes name the tensor).

This detects accidental corruption and edits by tools that do not recompute the digests. It is
not a signature: whoever can rewrite the file can rewrite the digests too. Weights written by the
runner (best/weights.safetensors) carry no metadata; for those 2 and 4 are skipped (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.rundir.atomic import write_atomically
from predictors.size_limits import check_size
from search_spaces.build import Network, build_model
from search_spaces.errors import InputFileError, UserError
from search_spaces.spec import ArchSpec, SpecError

logger = logging.getLogger(__name__)

__all__ = ["ARCH_FILE", "WEIGHTS_FILE", "ArchMismatchError", "WeightsError", "load", "load_model_files", "save"]

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "weights.safetensors"
WEIGHTS_FORMAT = "hwnas-weights"
WEIGHTS_FORMAT_VERSION = "1"
# Files that are (or may be) pickles: refused by name before a byte is read.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".jit", ".torchscript", ".tar", ".zip")


class WeightsError(UserError, ValueError):
    """A weights file is corrupt, truncated, tampered with, or not a safetensors file."""


class ArchMismatchError(WeightsError):
    """arch.json and the weights describe different networks."""


def weights_payload(state_dict: dict[str, torch.Tensor], arch: ArchSpec | None) -> bytes:
    """safetensors bytes of `state_dict` (contiguous CPU copies) with the integrity metadata `load`
    checks; without `arch`, the tensors alone (checkpoints that are not a model of a spec)."""
    from safetensors.torch import save as serialise

    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state_dict.items()}
    if arch is None:
        return serialise(tensors)
    digests = {name: hashlib.sha256(_tensor_bytes(t)).hexdigest() for name, t in tensors.items()}
    metadata = {
        "format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION, "arch_hash": arch.content_hash(),
        "arch_name": arch.name, "tensor_sha256": json.dumps(digests, sort_keys=True, separators=(",", ":")),
    }
    return serialise(tensors, metadata=metadata)


def save(model: nn.Module, arch: ArchSpec, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``arch.json`` and ``weights.safetensors`` (with integrity metadata) into `directory`."""
    directory = Path(directory)
    arch_path, weights_path = directory / ARCH_FILE, directory / WEIGHTS_FILE
    write_atomically(weights_path, weights_payload(model.state_dict(), arch))
    write_atomically(arch_path, arch.to_json() + "\n")
    return arch_path, weights_path


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # the bytes safetensors stores: the tensor's memory, little-endian, C order
    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: refusing to load a {path.suffix} file: TorchScript and torch.save files are pickles that can "
            f"run arbitrary code when loaded. Give a directory with {ARCH_FILE} + {WEIGHTS_FILE} (what `nas export` "
            "writes) or those two files"
        )


def resolve_paths(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(arch.json, weights.safetensors) from a directory, either file (the other is its sibling),
    or both files."""
    path = Path(path)
    for given in (path, Path(weights) if weights is not None else None):
        if given is not None:
            _refuse_pickle(given)
    if weights is not None:
        return path, Path(weights)
    if path.is_dir():
        return path / ARCH_FILE, path / WEIGHTS_FILE
    if path.suffix == ".safetensors":
        return path.parent / ARCH_FILE, path
    if path.suffix == ".json":
        return path, path.parent / WEIGHTS_FILE
    raise WeightsError(f"{path}: expected a directory with {ARCH_FILE} + {WEIGHTS_FILE}, a .json spec or a "
                       ".safetensors file")


def read_arch(path: Path) -> ArchSpec:
    if not path.is_file():
        raise InputFileError(f"{path} does not exist: a model needs its {ARCH_FILE} beside the weights")
    try:
        return ArchSpec.from_json(path.read_text())
    except (SpecError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: {error}") from None


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor entries, metadata, data offset) of a safetensors file, checked for structure."""
    if not path.is_file():
        raise InputFileError(f"{path} does not exist: a model needs its {WEIGHTS_FILE} beside {ARCH_FILE}")
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        # a safetensors header (JSON) follows its 8-byte length; a length whose low byte is 0x80
        # looks like a pickle's PROTO opcode, so only the byte after the length tells them apart
        looks_like_json = file.read(1) == b"{"
        file.seek(8)
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and not looks_like_json):
            raise WeightsError(f"{path} is a zip/pickle (torch.save or TorchScript), not safetensors; it is not "
                               "loaded because unpickling can run code. Re-export with `nas export`")
        if len(head) < 8:
            raise WeightsError(f"{path} is truncated ({size} bytes): not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise WeightsError(f"{path} is truncated or corrupt: its header claims {length} bytes but the file has "
                               f"{size - 8} after the length field; re-export it")
        raw = file.read(length)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path} has a corrupt safetensors header ({error}); re-export it") from None
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - length
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise WeightsError(f"{path}: tensor {name!r} has no valid data_offsets; the file is corrupt")
        if offsets[1] > data_size:
            raise WeightsError(f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]} of the data region, "
                               f"which has only {data_size} bytes; re-export it")
    return header, metadata, 8 + length


def _check_shapes(model: nn.Module, tensors: dict[str, torch.Tensor], arch_path: Path, weights_path: Path,
                  hash_note: str) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    problems = [f"{name}: weights {list(found[name])}, {ARCH_FILE} needs {list(shape)}"
                for name, shape in expected.items() if name in found and found[name] != shape]
    problems += [f"{name}: missing from the weights" for name in expected if name not in found]
    problems += [f"{name}: in the weights but not in the model" for name in found if name not in expected]
    if problems:
        shown = "\n  ".join(problems[:8]) + (f"\n  ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise ArchMismatchError(
            f"{weights_path} does not fit {arch_path}{hash_note}:\n  {shown}\n"
            "Use the arch.json the weights were exported with (or re-export both)"
        )


def load_model_files(path: str | os.PathLike, weights: str | os.PathLike | None = None
                     ) -> tuple[Network, dict[str, str]]:
    """The rebuilt model (eval mode) and the weights' metadata, after every check above."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    arch_path, weights_path = resolve_paths(path, weights)
    arch = read_arch(arch_path)
    entries, metadata, data_start = read_header(weights_path)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error}); re-export it") from None
    recorded_hash = metadata.get("arch_hash")
    hash_note = ""
    if recorded_hash is None:
        logger.info("%s has no integrity metadata (not written by `nas export`); checking shapes only", weights_path)
    elif recorded_hash != arch.content_hash():
        hash_note = f" (weights were saved for arch_hash {recorded_hash}, {arch_path.name} hashes to {arch.content_hash()})"
    check_size(arch, source=str(arch_path))  # before building: a crafted spec must not fill the memory
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the caller's RNG untouched
        model = build_model(arch)
    _check_shapes(model, tensors, arch_path, weights_path, hash_note)
    if hash_note:  # same shapes, different spec (e.g. another kernel's padding, activation): still wrong
        raise ArchMismatchError(f"{weights_path} does not belong to {arch_path}{hash_note}. Use the arch.json the "
                                "weights were exported with, or re-export both")
    verify_digests(weights_path, entries, metadata, data_start)
    model.load_state_dict(tensors, strict=True)
    return model.eval(), metadata


def verify_digests(path: Path, entries: dict[str, Any], metadata: dict[str, str], data_start: int) -> None:
    if "tensor_sha256" not in metadata:
        return
    try:
        digests = json.loads(metadata["tensor_sha256"])
    except ValueError:
        raise WeightsError(f"{path}: metadata tensor_sha256 is not valid JSON; the file was edited") from None
    with open(path, "rb") as file:
        for name, entry in sorted(entries.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            file.seek(data_start + begin)
            actual = hashlib.sha256(file.read(end - begin)).hexdigest()
            if digests.get(name) != actual:
                raise WeightsError(
                    f"{path}: tensor {name!r} was modified after export (sha256 {actual[:16]}... != recorded "
                    f"{str(digests.get(name))[:16]}...); restore the exported file or re-export the run"
                )


def load(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> Network:
    """Rebuild a model from ``arch.json`` + ``weights.safetensors`` (a directory, either file, or
    both files), without any pickle; eval mode. Raises `WeightsError` / `ArchMismatchError` /
    `SpecError` / `InputFileError` (a FileNotFoundError) with the file and the fix."""
    model, _ = load_model_files(path, weights)
    return model
