"""maskcore: face-mask classification, trained with Keras and served with ONNX Runtime.

The inference side (everything here but what ``jobs/train.py`` imports) needs only ONNX Runtime,
Pillow, NumPy, boto3 and click; importing it never imports TensorFlow.
"""

from maskcore.errors import (
    DatasetError,
    ImageDecodeError,
    MaskcoreError,
    ModelError,
    StorageError,
    UsageError,
)
from maskcore.preprocess import (
    PREPROCESS_VERSION,
    PreprocessSpec,
    load,
    preprocess,
    preprocess_batch,
)

__all__ = [
    "PREPROCESS_VERSION",
    "DatasetError",
    "ImageDecodeError",
    "MaskcoreError",
    "ModelError",
    "PreprocessSpec",
    "StorageError",
    "UsageError",
    "load",
    "preprocess",
    "preprocess_batch",
]
