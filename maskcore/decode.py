"""The decode task that runs in worker processes: read, hash and decode a chunk of refs.

It lives apart from the pipeline so that a decode process imports only Pillow, NumPy and the
storage code, not ONNX Runtime. What it keeps of each picture depends on the face stage: with it,
the upright RGB picture (for the detector and the crops); without it, only the whole picture's
model input, decoded no larger than the model needs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from maskcore.detector import DetectorSpec, letterbox
from maskcore.errors import ImageDecodeError, StorageError
from maskcore.preprocess import Picture, PreprocessSpec, decode, load
from maskcore.storage import Ref, Source

__all__ = ["CHUNK", "DecodedItem", "RefFacts", "decode_refs", "finer_picture", "stack_inputs"]

#: Pictures per decode task: large enough that pickling and scheduling stay cheap.
CHUNK = 16


@dataclass
class RefFacts:
    """What is known of one ref whatever came of it: its hash and size, or why it failed.

    The decode task's :class:`DecodedItem` and the analysis's ``PictureResult`` both carry it.
    """

    ref: Ref
    sha256: str = ""
    width: int = 0  # original width, after EXIF orientation
    height: int = 0
    error: str = ""
    error_kind: str = ""  # one of maskcore.manifest.ERROR_KINDS when ``error`` is set


@dataclass
class DecodedItem(RefFacts):
    """What a decode task learned about one ref: an error, or its pixels in one of two forms."""

    whole: np.ndarray | None = None  # the whole picture as model input (no face stage)
    picture: Picture | None = None  # the upright picture (face stage)
    canvas: np.ndarray | None = None  # the picture scaled for the detector, uint8 (face stage)
    canvas_scale: float = 1.0  # canvas pixels per pixel of ``picture.image``
    # The file's bytes, kept when the detector's second look would want the picture larger
    # than it was decoded (a JPEG the decoder shrank under ``fine_canvas``): decoded again, by
    # :func:`finer_picture`, only for a picture whose first look calls for a second one. Most
    # large pictures are close-ups of one face that do not, and decoding every one of them large
    # halved the speed on a phone's photographs.
    data: bytes | None = None

    @property
    def ok(self) -> bool:
        return not self.error


def decode_refs(source: Source, refs: list[Ref], spec: PreprocessSpec,
                faces: DetectorSpec | None = None) -> tuple[list[DecodedItem], float]:
    """Read and decode a few refs (runs in a worker process).

    Args:
        source: reads each ref's bytes.
        refs: what to decode.
        spec: the classifier's preprocessing.
        faces: the face detector's settings, for the face stage: keep the upright picture,
            decoded at least ``faces.canvas`` large on both sides (JPEG may shrink by 1/2, 1/4,
            1/8 down to it), and its first look's canvas, made here so that the process that
            runs the detector (one in front of a GPU) only runs it. None keeps only the whole
            picture's model input.

    Returns:
        One :class:`DecodedItem` per ref, in order, and the seconds this took.
    """
    t0 = time.perf_counter()
    out: list[DecodedItem] = []
    for ref in refs:
        try:
            data = source.read(ref)
        except StorageError as exc:
            out.append(DecodedItem(ref, error=str(exc), error_kind=exc.kind))
            continue
        digest = hashlib.sha256(data).hexdigest()
        try:
            if faces is None:
                d = load(data, spec)
                out.append(DecodedItem(ref, digest, d.width, d.height, whole=d.array))
            else:
                pic = decode(data, spec, draft=faces.canvas)
                canvas, scale = letterbox(pic.image, faces)
                longer = max(pic.width, pic.height)
                finer = faces.looks_finer(longer) and \
                    max(pic.image.size) < min(faces.fine_canvas, longer)
                out.append(DecodedItem(ref, digest, pic.width, pic.height, picture=pic,
                                       canvas=canvas, canvas_scale=scale,
                                       data=data if finer else None))
        except ImageDecodeError as exc:
            out.append(DecodedItem(ref, sha256=digest, error=str(exc), error_kind=exc.kind))
    return out, time.perf_counter() - t0


def finer_picture(item: DecodedItem, spec: PreprocessSpec, faces: DetectorSpec) -> Picture:
    """The picture a second look is drawn from: the file decoded again at least
    ``faces.fine_canvas`` large when the decoder had shrunk it under that, else the one
    decoded (``item.picture``). Should decoding it again fail, the picture decoded for the
    first look serves: it runs inside a batch's analysis, where an exception would cost every
    picture of the batch its row."""
    assert item.picture is not None, "only a decoded picture gets a second look"
    if item.data is None:
        return item.picture
    try:
        return decode(item.data, spec, draft=faces.fine_canvas)
    except ImageDecodeError:
        return item.picture


def stack_inputs(arrays: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Model inputs stacked into one batch (an empty batch of the right shape for none)."""
    h, w = spec.size
    return np.stack(arrays) if arrays else np.empty((0, h, w, 3), np.float32)
