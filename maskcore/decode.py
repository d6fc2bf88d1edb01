"""The decode task that runs in worker processes: read, hash and preprocess a chunk of refs.

It lives apart from the pipeline so that a decode process imports only Pillow, NumPy and the
storage code, not ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from maskcore.errors import ImageDecodeError, StorageError
from maskcore.preprocess import PreprocessSpec, load
from maskcore.storage import Ref, Source

__all__ = ["CHUNK", "DecodedRef", "decode_chunk"]

#: Pictures per decode task: large enough that pickling and scheduling stay cheap.
CHUNK = 16


@dataclass(frozen=True)
class DecodedRef:
    """What a decode task learned about one ref (the pixels travel separately, stacked).

    Not :class:`maskcore.preprocess.Decoded`, which holds one picture's pixels.
    """

    ref: Ref
    sha256: str = ""
    width: int = 0
    height: int = 0
    error: str = ""
    row: int = -1  # index into the chunk's stacked array; -1 for an error


def decode_chunk(
    source: Source, refs: list[Ref], spec: PreprocessSpec
) -> tuple[list[DecodedRef], np.ndarray, float]:
    """Read and preprocess a few refs (runs in a worker process).

    Returns:
        One :class:`DecodedRef` per ref, the stacked arrays of those that decoded, and the seconds
        this took.
    """
    t0 = time.perf_counter()
    out: list[DecodedRef] = []
    arrays: list[np.ndarray] = []
    for ref in refs:
        try:
            data = source.read(ref)
        except StorageError as exc:
            out.append(DecodedRef(ref, error=str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        try:
            d = load(data, spec)
        except ImageDecodeError as exc:
            out.append(DecodedRef(ref, sha256=digest, error=str(exc)))
            continue
        out.append(DecodedRef(ref, digest, d.width, d.height, row=len(arrays)))
        arrays.append(d.array)
    h, w = spec.size
    stacked = np.stack(arrays) if arrays else np.empty((0, h, w, 3), np.float32)
    return out, stacked, time.perf_counter() - t0
