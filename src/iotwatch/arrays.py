"""Plain arrays on disk in the safetensors layout, read and written with numpy alone.

The bundle's numeric parts (autoencoder weights, the compiled tree ensemble) are stored as
safetensors: an 8-byte little-endian header length, a JSON header naming each array's dtype,
shape and byte range, then the raw little-endian bytes. Loading it cannot run code (unlike a
pickle), and reading it needs neither torch nor the safetensors package, so the monitor starts
without importing torch (about a second of a 2 s run on a 2 M packet capture).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from iotwatch.errors import InputError

_DTYPES = {"F64": "<f8", "F32": "<f4", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def write_arrays(
    arrays: dict[str, np.ndarray], path: Path | str, metadata: dict[str, str] | None = None
) -> None:
    """Write ``arrays`` (name -> numpy array of a supported dtype) as one safetensors file."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        key = _NAMES.get(a.dtype.str)
        if key is None:
            raise ValueError(f"{name}: dtype {a.dtype} is not stored in bundles")
        raw = a.tobytes()
        header[name] = {"dtype": key, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for raw in blobs:
            fh.write(raw)


def read_arrays(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (name -> array, metadata). A malformed file is an InputError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if len(data) < 8:
            raise ValueError("shorter than its header")
        (n,) = struct.unpack("<Q", data[:8])
        if n > min(_MAX_HEADER, len(data) - 8):
            raise ValueError("header length past the end of the file")
        header = json.loads(data[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", {}) or {}
        body = memoryview(data)[8 + n :]
        out = {}
        for name, spec in header.items():
            dtype = np.dtype(_DTYPES[spec["dtype"]])
            lo, hi = (int(v) for v in spec["data_offsets"])
            shape = tuple(int(v) for v in spec["shape"])
            if not 0 <= lo <= hi <= len(body) or hi - lo != dtype.itemsize * int(np.prod(shape)):
                raise ValueError(f"array {name!r}: byte range does not fit its shape")
            out[name] = np.frombuffer(body[lo:hi], dtype=dtype).reshape(shape).copy()
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise InputError(f"{path}: not a safetensors file ({exc})") from None
    return out, {str(k): str(v) for k, v in meta.items()}
