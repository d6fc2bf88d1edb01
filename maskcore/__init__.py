"""maskcore: face-mask classification, trained with Keras and served with ONNX Runtime.

The public API: :func:`open_analyzer` loads the models once, :func:`classify_picture` finds and
classifies the faces of one picture (see :mod:`maskcore.api`), :func:`run_batch` is the batch
job, :func:`write_report` its HTML page. The inference side (everything but the training
modules) needs only ONNX Runtime, Pillow, NumPy, boto3 and click; importing it never imports
TensorFlow.
"""

from maskcore.api import Classified, classify_picture
from maskcore.batch import run_batch
from maskcore.errors import (
    DatasetError,
    ImageDecodeError,
    MaskcoreError,
    ModelError,
    StorageError,
    UsageError,
)
from maskcore.faces import Analyzer, FaceOptions, open_analyzer
from maskcore.preprocess import (
    PREPROCESS_VERSION,
    PreprocessSpec,
    load,
    preprocess,
    preprocess_batch,
)
from maskcore.report import write_report
from maskcore.results import open_results

__all__ = [
    "PREPROCESS_VERSION",
    "Analyzer",
    "Classified",
    "FaceOptions",
    "DatasetError",
    "ImageDecodeError",
    "MaskcoreError",
    "ModelError",
    "PreprocessSpec",
    "StorageError",
    "UsageError",
    "classify_picture",
    "load",
    "open_analyzer",
    "open_results",
    "preprocess",
    "preprocess_batch",
    "run_batch",
    "write_report",
]
