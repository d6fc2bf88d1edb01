"""The package's exceptions: one root, one subclass per place a run can fail.

    MaskcoreError                 anything this package raises on purpose
     ├── ImageDecodeError         bytes that are not a picture we can read (a per-picture fault)
     ├── DatasetError             a training folder we refuse (one class, an empty class, ...)
     ├── ModelError               a missing, unreadable or incompatible model or card
     ├── StorageError             a folder or bucket that cannot be listed, read or written
     └── UsageError               arguments that cannot work together (a CUDA request without CUDA)

Errors of Pillow, ONNX Runtime and botocore are translated into these where they enter the package
(``raise ...Error(...) from exc``), so the jobs never import those libraries to catch something.
"""

from __future__ import annotations

__all__ = [
    "MaskcoreError",
    "ImageDecodeError",
    "DatasetError",
    "ModelError",
    "StorageError",
    "UsageError",
]


class MaskcoreError(Exception):
    """Root of every error this package raises on purpose."""


class ImageDecodeError(MaskcoreError):
    """The bytes are not a picture this package can decode (or are over the pixel limit).

    ``kind`` is ``decode``, or ``too_large`` for the pixel limit.
    """

    def __init__(self, message: str, kind: str = "decode") -> None:
        super().__init__(message)
        self.kind = kind


class DatasetError(MaskcoreError):
    """A dataset folder cannot be trained on as it is."""


class ModelError(MaskcoreError):
    """A model file or its card is missing, unreadable, or made for other preprocessing."""


class StorageError(MaskcoreError):
    """A local folder or an S3 prefix cannot be listed, read or written.

    ``kind`` says which of :data:`maskcore.manifest.ERROR_KINDS` it is when it is about one
    object.
    """

    def __init__(self, message: str, kind: str = "read") -> None:
        super().__init__(message)
        self.kind = kind


class UsageError(MaskcoreError):
    """Options that cannot work together on this machine."""
