"""A minimal but real GGUF v3 file: metadata only, no tensors.

Model blobs of the simulated host are GGUF files that llama.cpp's header parser would accept:
the runner reads its layer count from ``<arch>.block_count`` like the real one does. The
weights are not there; ``simhost.weights_bytes`` says how big they would be, so the simulated
buffers and memory estimates have realistic sizes.
"""

from __future__ import annotations

import struct
from typing import Any

MAGIC = b"GGUF"
_U32, _STR, _U64 = 4, 8, 10
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def write(path: str, metadata: dict[str, str | int]) -> None:
    """Write a GGUF file holding `metadata` (str values as strings, ints as u32 or u64)."""
    out = bytearray(MAGIC + struct.pack("<IQQ", 3, 0, len(metadata)))
    for key, value in metadata.items():
        out += _string(key)
        if isinstance(value, str):
            out += struct.pack("<I", _STR) + _string(value)
        elif value < 2**32:
            out += struct.pack("<II", _U32, value)
        else:
            out += struct.pack("<IQ", _U64, value)
    out += b"\0" * (-len(out) % 32)
    with open(path, "wb") as f:
        f.write(out)


def read(path: str) -> dict[str, Any]:
    """The metadata of a GGUF file (scalars and strings; arrays are skipped)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != MAGIC:
        raise ValueError(f"{path}: not a GGUF file")
    _, _, count = struct.unpack_from("<IQQ", data, 4)
    off = 24
    meta: dict[str, Any] = {}

    def take_string() -> str:
        nonlocal off
        (n,) = struct.unpack_from("<Q", data, off)
        off += 8 + n
        return data[off - n:off].decode()

    def take_value(kind: int) -> object:
        nonlocal off
        if kind == _STR:
            return take_string()
        if kind == 9:
            (sub, n) = struct.unpack_from("<IQ", data, off)
            off += 12
            return [take_value(sub) for _ in range(n)]
        fmt = _SCALARS[kind]
        (v,) = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return v

    for _ in range(count):
        key = take_string()
        (kind,) = struct.unpack_from("<I", data, off)
        off += 4
        meta[key] = take_value(kind)
    return meta
