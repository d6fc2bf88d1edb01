"""Keras -> ONNX export and the parity check. Training side only: imports TensorFlow and tf2onnx.

``tf2onnx.convert.from_keras`` does not work with Keras 3, so the model is wrapped in a
``tf.function`` with an explicit input signature (symbolic batch, named ``image``) and converted
with ``from_function``; the graph output is then renamed ``probabilities`` and the card's facts
(classes, input size, preprocessing spec and version) are written into the ONNX metadata too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from maskcore.card import INPUT_NAME, OUTPUT_NAME
from maskcore.errors import ModelError
from maskcore.preprocess import PreprocessSpec

__all__ = ["OPSET", "export_onnx", "check_parity"]

OPSET = 17


def export_onnx(
    model: Any, path: Path, *, classes: list[str], spec: PreprocessSpec
) -> Path:
    """Convert a Keras model to ONNX at ``path`` with named tensors and metadata."""
    h, w = spec.size
    signature = [tf.TensorSpec([None, h, w, 3], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]  # TensorFlow's
    def serve(image: tf.Tensor) -> tf.Tensor:
        return model(image, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    _rename_output(proto, OUTPUT_NAME)
    if [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise ModelError(f"unexpected ONNX inputs {[i.name for i in proto.graph.input]}")
    meta = {
        "classes": json.dumps(classes),
        "input_size": json.dumps([h, w]),
        "preprocess_version": spec.version,
        "preprocess": json.dumps(spec.to_dict()),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "maskcore"
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _rename_output(proto: onnx.ModelProto, name: str) -> None:
    """Give the single graph output a stable name (tf2onnx names it after the TF tensor)."""
    if len(proto.graph.output) != 1:
        raise ModelError(f"expected one ONNX output, found {len(proto.graph.output)}")
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name


def check_parity(
    model: Any, onnx_path: Path, x: np.ndarray, *, atol: float = 1e-4, batch_size: int = 128
) -> dict[str, Any]:
    """Compare Keras and ONNX Runtime (CPU) on ``x``: max abs difference and label agreement.

    Returns:
        ``{"n", "max_abs_diff", "labels_identical", "passed", "atol"}``.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    same = True
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        ref = np.asarray(model(chunk, training=False), dtype=np.float32)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
        same = same and bool((ref.argmax(1) == got.argmax(1)).all())
    return {
        "n": int(len(x)),
        "max_abs_diff": worst,
        "labels_identical": same,
        "atol": atol,
        "passed": same and worst <= atol,
    }
