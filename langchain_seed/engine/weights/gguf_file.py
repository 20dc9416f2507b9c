"""The tensor index of a GGUF file, read without parsing its metadata values.

gguf-py's `GGUFReader` turns every metadata value into numpy views, the tokenizer's 49,152
tokens and merges included: on the default target that takes 3 s and 170 MB before the
first weight is read (measured 2026-12-06, docs/BENCHMARKS.md "Quantised weights").
Loading weights needs only the tensor infos, so `read_index` skips over the metadata
(a length prefix per string) and returns where each tensor's bytes are; `read_tensor`
reads one of them. The type codes and block sizes are gguf-py's (`gguf.constants`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Bytes of each scalar GGUF value type (`gguf.GGUFValueType`); 8 is a string, 9 an array."""
_STRING, _ARRAY, _UINT32 = 8, 9, 4


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: its name, type name (e.g. "Q4_1"), dims as GGUF lists them
    (innermost first), and where its bytes lie in the file."""

    name: str
    type_name: str
    dims: tuple[int, ...]
    offset: int
    nbytes: int


def read_index(path: str | Path) -> list[TensorInfo]:
    """Every tensor's `TensorInfo`. Raises ValueError when `path` is not a GGUF file, has an
    unknown tensor type, or is shorter than its tensors need (truncated)."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            infos, data_start = _read_header(handle, path.name)
        except struct.error as error:
            raise ValueError(f"{path.name}: the GGUF header is cut short ({error})") from error
    size = path.stat().st_size
    tensors = [TensorInfo(name, kind, dims, data_start + offset, _nbytes(path.name, name, kind, dims))
               for name, kind, dims, offset in infos]
    for tensor in tensors:
        if tensor.offset + tensor.nbytes > size:
            raise ValueError(f"{path.name}: tensor {tensor.name} ({tensor.type_name}) ends at byte "
                             f"{tensor.offset + tensor.nbytes}, past the end of the file ({size} bytes): it is "
                             "truncated")
    return tensors


def read_tensor(path: str | Path, tensor: TensorInfo) -> np.ndarray:
    """The raw bytes of `tensor` (uint8, a fresh array)."""
    with open(path, "rb") as handle:
        handle.seek(tensor.offset)
        data = np.frombuffer(handle.read(tensor.nbytes), dtype=np.uint8).copy()
    if data.size != tensor.nbytes:
        raise ValueError(f"{Path(path).name}: tensor {tensor.name} is truncated")
    return data


def _read_header(handle: BinaryIO, file: str) -> tuple[list[tuple[str, str, tuple[int, ...], int]], int]:
    """(name, type name, dims, offset in the data section) per tensor, and where the data starts."""
    from gguf import GGMLQuantizationType

    if handle.read(4) != MAGIC:
        raise ValueError(f"{file}: not a GGUF file (no GGUF magic)")
    version, tensor_count, kv_count = struct.unpack("<IQQ", handle.read(20))
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{file}: GGUF version {version} is not supported (reads {SUPPORTED_VERSIONS})")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = _string(handle)
        value_type = _u32(handle)
        if key == "general.alignment" and value_type == _UINT32:
            alignment = _u32(handle)
        else:
            _skip_value(handle, value_type, file)
    infos = []
    for _ in range(tensor_count):
        name = _string(handle)
        dims = _dims(handle)
        code, offset = struct.unpack("<IQ", handle.read(12))
        try:
            kind = GGMLQuantizationType(code).name
        except ValueError:
            raise ValueError(f"{file}: tensor {name} has unknown type code {code}") from None
        infos.append((name, kind, dims, offset))
    position = handle.tell()
    return infos, position + (-position % alignment)


def _dims(handle: BinaryIO) -> tuple[int, ...]:
    count = _u32(handle)
    return tuple(struct.unpack(f"<{count}Q", handle.read(8 * count)))


def _nbytes(file: str, name: str, kind: str, dims: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    values = int(np.prod(dims)) if dims else 1
    if dims and dims[0] % block_values:
        raise ValueError(f"{file}: tensor {name} ({kind}) has rows of {dims[0]} values, not a multiple of its "
                         f"blocks' {block_values}")
    return values // block_values * block_bytes


def _u32(handle: BinaryIO) -> int:
    return struct.unpack("<I", handle.read(4))[0]


def _string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    return handle.read(length).decode("utf-8", errors="replace")


def _skip_value(handle: BinaryIO, value_type: int, file: str) -> None:
    if value_type == _STRING:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(length, 1)
    elif value_type == _ARRAY:
        element_type, count = struct.unpack("<IQ", handle.read(12))
        if element_type in _SCALAR_SIZES:
            handle.seek(_SCALAR_SIZES[element_type] * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, element_type, file)
    elif value_type in _SCALAR_SIZES:
        handle.seek(_SCALAR_SIZES[value_type], 1)
    else:
        raise ValueError(f"{file}: unknown GGUF metadata value type {value_type}")
