"""The safetensors format (huggingface/safetensors), read and written with numpy only.

A file is an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}`` and the raw little-endian tensors. Reading
maps the file (``np.memmap``): a tensor is read when it is used, so a multi-GB checkpoint is never
copied whole. No pickle, no code: a file that is not safetensors is refused with its name.

    tensors = read("unet/diffusion_pytorch_model.safetensors")   # {name: np.ndarray (lazy)}
    write("model.safetensors", {"w": np.zeros((2, 3), np.float32)})
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from diffusion_jax.utils.atomic import atomic_path

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
_MAX_HEADER = 100_000_000


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file: the message names it."""


def read_header(path: str | Path) -> tuple[dict, int]:
    """``(header, data_start)`` of a safetensors file, checked against the file's size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise SafetensorsError(f"{path} is truncated or not a safetensors file (its first 8 "
                                   f"bytes give a header of {n} bytes in a file of {size}); "
                                   "download or export it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path} is not a safetensors file (header: {e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is not a safetensors file (its header is not an object)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info.get("data_offsets", (0, -1))
        if info.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; "
                                   f"readable: {', '.join(DTYPES)}")
        want = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(DTYPES[info["dtype"]]).itemsize
        if not 0 <= begin <= end <= data or end - begin != want:
            raise SafetensorsError(f"{path}: tensor {name!r} (shape {info['shape']}, "
                                   f"{info['dtype']}) lies outside the file or has the wrong size: "
                                   "the file is truncated or damaged; download it again")
    return header, 8 + n


def read(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the file, as read-only arrays mapped from the file (nothing is copied until
    used)."""
    header, start = read_header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        if end == begin:
            out[name] = np.zeros(info["shape"], dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin,
                              shape=tuple(info["shape"]))
    return out


def write(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write ``tensors`` (host arrays) as one safetensors file, whole or not at all."""
    header, offset, arrays = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        if a.dtype not in _NAMES:
            raise SafetensorsError(f"{name}: dtype {a.dtype} cannot be stored in safetensors")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writes it
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())
