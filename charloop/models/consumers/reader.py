"""Read a LoRA file's header and shapes without loading or unpickling anything.

A consumer checker must judge files from anywhere: a pickle renamed ``.safetensors``, a
truncated download, a JSON header of the wrong shape. Only the safetensors header is
parsed (8-byte length, then JSON); tensor data is never read, so nothing in the file can
run code and a multi-GB file is checked in milliseconds.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from charloop.core.errors import BadInput

_LEN = struct.Struct("<Q")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


class UnreadableAdapter(BadInput):
    """The file is not a complete safetensors file (a pickle, truncated, garbage)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's dtype and shape, from the header."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AdapterFile:
    """A safetensors file's tensors (name -> dtype and shape) and ``__metadata__``."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def _sniff(head: bytes, path: Path) -> str | None:
    """Why a file that is not safetensors is not (pickles and zips are named, never run)."""
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "a Python pickle (refused: loading it could run code)"
    if zipfile.is_zipfile(path):
        return "a zip archive (a torch .pt/.ckpt pickle?) (refused: loading it could run code)"
    return None


def read_adapter_file(path: str | Path) -> AdapterFile:
    """Parse ``path``'s safetensors header and check it against the file size.

    Raises:
        UnreadableAdapter: missing, not safetensors, truncated, or a malformed header.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableAdapter(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(_LEN.size)
        if len(head) < _LEN.size:
            raise UnreadableAdapter(f"{path} is {size} bytes: too short for safetensors")
        if why := _sniff(head, path):
            raise UnreadableAdapter(f"{path} is {why}")
        (length,) = _LEN.unpack(head)
        if length > min(_MAX_HEADER, size - _LEN.size):
            raise UnreadableAdapter(
                f"{path} is not a safetensors file, or is truncated (header of {length} "
                f"bytes in a {size}-byte file)"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnreadableAdapter(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise UnreadableAdapter(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, entry in header.items():
        try:
            dtype, shape = str(entry["dtype"]), tuple(int(n) for n in entry["shape"])
            begin, stop = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UnreadableAdapter(f"{path}: malformed header entry {name!r}") from None
        count = 1
        for n in shape:
            count *= n
        if stop - begin != count * _DTYPE_BYTES.get(dtype, 0) or begin < 0:
            raise UnreadableAdapter(f"{path}: tensor {name!r} has inconsistent offsets")
        tensors[name], end = TensorInfo(dtype, shape), max(end, stop)
    if _LEN.size + length + end > size:
        raise UnreadableAdapter(
            f"{path} is truncated: its tensors need {_LEN.size + length + end} bytes, the "
            f"file has {size}"
        )
    return AdapterFile(path, tensors, {str(k): str(v) for k, v in metadata.items()})
