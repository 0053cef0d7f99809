"""Deterministic safetensors headers, with provenance metadata.

The safetensors writer stores ``__metadata__`` in a hash map whose order changes from
run to run, and peft serialises ``target_modules`` from a set: the same weights would
give different file bytes. Rewriting the header with sorted keys makes an adapter's
sha256 a pure function of its content, and is where provenance is added.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from charloop.core import atomic

_LEN = struct.Struct("<Q")


def read_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (tensor entries and ``__metadata__``)."""
    with open(path, "rb") as handle:
        (length,) = _LEN.unpack(handle.read(_LEN.size))
        return json.loads(handle.read(length))


def _canonical_json_string(text: str) -> str:
    """Re-dump a JSON string with sorted keys and sorted string lists (set-like fields)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, dict):
        value = {
            k: sorted(v) if isinstance(v, list) and all(isinstance(i, str) for i in v) else v
            for k, v in value.items()
        }
    return json.dumps(value, indent=2, sort_keys=True)


def canonicalize(path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Rewrite ``path``'s header with sorted keys, merging ``extra_metadata`` into it.

    Tensor data is untouched: offsets in the header are relative to the data section.
    """
    data = Path(path).read_bytes()
    (length,) = _LEN.unpack(data[: _LEN.size])
    header = json.loads(data[_LEN.size : _LEN.size + length])
    body = data[_LEN.size + length :]
    metadata = {**header.pop("__metadata__", {}), **(extra_metadata or {})}
    metadata = {k: _canonical_json_string(v) for k, v in sorted(metadata.items())}
    ordered = {"__metadata__": metadata, **dict(sorted(header.items()))}
    raw = json.dumps(ordered, separators=(",", ":"), sort_keys=False).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    atomic.write_bytes(path, _LEN.pack(len(raw)) + raw + body)
