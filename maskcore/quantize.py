"""float32 ONNX -> int8 ONNX for the CPU, and the check that the two agree. Training side only.

Static quantization (ONNX Runtime's ``quantize_static``) in QDQ form: weights int8 per output
channel, activations uint8 with ranges calibrated on training pictures (never validation or
test ones). On a CPU with VNNI the int8 model runs about 2.3 times faster than float32 for
the bundled model, which is what the batch job's CPU speed rests on; on a GPU the engine keeps
float32. The variant is only kept when it agrees with the float32 model on the test split
(:func:`compare`); its own test metrics go into the card beside the float32 ones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from maskcore.card import INPUT_NAME, OUTPUT_NAME, file_sha256
from maskcore.metrics import evaluate, summary_line

#: The int8 variant's file name, beside model.onnx.
INT8_FILE = "model.int8.onnx"

__all__ = ["CALIBRATION_PICTURES", "DETECTOR_QUANTIZED", "INT8_FILE", "MIN_AGREEMENT",
           "QUANTIZED_OPS", "compare", "make_int8_variant", "quantize_detector", "quantize_int8"]

#: Operators run in int8; the rest (pooling to a vector, dense head, softmax) stays float32.
QUANTIZED_OPS = ("Conv", "MaxPool")
#: Training pictures the activation ranges are calibrated on (spread over the whole split).
CALIBRATION_PICTURES = 300
#: Share of test pictures on which the int8 label must equal the float32 one to keep the variant.
MIN_AGREEMENT = 0.995


#: The face detector's convolutions run in int8: those of its neck (the FPN and SSH modules,
#: by the names of the RetinaFace graph, kept by ``make train-detector``). They are the dense
#: 3x3 convolutions at the finest strides, most of the network's time on a CPU; the MobileNet
#: backbone (depthwise convolutions, which int8 barely speeds up) and the heads (the scores
#: the threshold reads) stay float32. Measured on one thread, 640 px canvases of the street
#: pictures: 12.8 ms a picture against 17.5, recall on the training and validation pictures
#: unchanged; every convolution in int8 ran 11.9 ms but lost 15 points of recall (docs/MODEL.md).
DETECTOR_QUANTIZED = ("/fpn/", "/ssh")


class _Batches(CalibrationDataReader):  # type: ignore[misc]  # untyped base (onnxruntime)
    """Feeds calibration pictures to ``quantize_static`` in batches."""

    def __init__(self, x: np.ndarray, batch_size: int, name: str = INPUT_NAME) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = (
            {name: x[i:i + batch_size]} for i in range(0, len(x), batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, *, batch_size: int = 32
                  ) -> dict[str, Any]:
    """Write the int8 variant of ``src`` to ``dst``; returns how it was made (for the card).

    Args:
        src: the float32 model (``model.onnx``).
        dst: where the int8 model goes (``model.int8.onnx``).
        calibration: preprocessed training pictures, float32 (N, H, W, 3); at most
            :data:`CALIBRATION_PICTURES` of them, evenly spaced, are used.
    """
    step = max(len(calibration) // CALIBRATION_PICTURES, 1)
    picked = np.ascontiguousarray(calibration[::step][:CALIBRATION_PICTURES], dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="maskcore-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime's quantizer recommends.
        quant_pre_process(str(src), str(prepared))
        quantize_static(
            str(prepared), str(dst), _Batches(picked, batch_size),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # The convolutions are the cost. Leaving the head float keeps the probabilities
            # continuous: a uint8 softmax output has 256 levels, which tied scores and took
            # the test ROC AUC from 0.9985 to 0.9956.
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
    # The quantizer drops the metadata the engine checks (classes, preprocessing version).
    original, quantized = onnx.load(str(src)), onnx.load(str(dst))
    del quantized.metadata_props[:]
    for prop in original.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key="quantized_from", value=src.name)
    quantized.producer_name = original.producer_name
    onnx.save(quantized, str(dst))
    return {
        "format": "QDQ: weights int8 per output channel, activations uint8",
        "quantized_ops": list(QUANTIZED_OPS),
        "calibration": {"pictures": int(len(picked)), "from": "training split",
                        "method": "minmax"},
    }


def quantize_detector(src: Path, dst: Path, canvases: np.ndarray) -> dict[str, Any]:
    """Write the face detector's int8 variant: the convolutions named under
    :data:`DETECTOR_QUANTIZED` in int8 (QDQ, weights per output channel), the rest float32.
    Returns how it was made (for the card).

    Args:
        src: the float32 detector (``face_detector.onnx``).
        dst: where the int8 one goes.
        canvases: training pictures as the network's input (N, 3, S, S), one size (the
            calibration stacks every picture's activations).

    Raises:
        ValueError: the graph has no convolution under those names (not a RetinaFace graph).
    """
    with tempfile.TemporaryDirectory(prefix="maskcore-quant-") as tmp:
        model = onnx.load(str(src))
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 13:  # per-channel scales need DequantizeLinear's axis (opset 13)
            model = version_converter.convert_version(model, 13)
        upgraded, prepared = Path(tmp) / "upgraded.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, str(upgraded))
        quant_pre_process(str(upgraded), str(prepared))
        nodes = [n.name for n in onnx.load(str(prepared)).graph.node
                 if n.op_type == "Conv" and n.name.startswith(DETECTOR_QUANTIZED)]
        if not nodes:
            raise ValueError(f"{src}: no convolution named under {DETECTOR_QUANTIZED}")
        name = model.graph.input[0].name
        quantize_static(
            str(prepared), str(dst), _Batches(np.ascontiguousarray(canvases, np.float32), 8,
                                              name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
            nodes_to_quantize=nodes,
        )
    return {
        "format": "QDQ: weights int8 per output channel, activations uint8",
        "quantized": f"the {len(nodes)} convolutions named under {list(DETECTOR_QUANTIZED)} "
                     "(the neck); backbone and heads float32",
        "calibration": {"pictures": int(len(canvases)), "from": "training split",
                        "method": "minmax"},
    }


def compare(fp32: Path, int8: Path, x: np.ndarray, *, batch_size: int = 128,
            min_agreement: float = MIN_AGREEMENT) -> tuple[dict[str, Any], np.ndarray]:
    """Run both models (CPU) on ``x``: how far the int8 probabilities are from float32's.

    Returns:
        ``({"n", "max_abs_diff", "label_agreement", "min_agreement", "passed"}, int8
        probabilities)``.
    """
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (fp32, int8)]
    ref, got = (np.concatenate([s.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0]
                                for i in range(0, len(x), batch_size)]) for s in sessions)
    agreement = float((ref.argmax(1) == got.argmax(1)).mean()) if len(x) else 1.0
    return {
        "n": int(len(x)),
        "max_abs_diff": float(np.abs(ref - got).max()) if len(x) else 0.0,
        "label_agreement": agreement,
        "min_agreement": min_agreement,
        "passed": agreement >= min_agreement,
    }, got


def make_int8_variant(
    onnx_path: Path,
    x_calibration: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: list[str],
    *,
    log: Callable[[str], None] = print,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """Quantize ``onnx_path`` into :data:`INT8_FILE` beside it, check it and score it on the test split.

    Returns:
        The card's ``int8`` entry (file, sha256, how it was made, the comparison with float32,
        its own test metrics). When the comparison fails, the file is removed again and the
        entry's ``parity.passed`` is false: the card must then not list it.
    """
    int8_path = onnx_path.with_name(INT8_FILE)
    made = quantize_int8(onnx_path, int8_path, x_calibration)
    check, proba = compare(onnx_path, int8_path, x_test, min_agreement=min_agreement)
    metrics = evaluate(y_test, proba, classes)
    log(f"int8 variant: labels agree with float32 on {check['label_agreement']:.2%} of "
        f"{check['n']} test pictures, max abs diff {check['max_abs_diff']:.3f}; "
        + summary_line(metrics))
    entry = {"onnx_file": int8_path.name, "onnx_sha256": file_sha256(int8_path), **made,
             "parity": check,
             "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece",
                                                 "errors", "n")}}
    if not check["passed"]:
        int8_path.unlink()
        log(f"int8 variant dropped: agreement under {check['min_agreement']:.1%}; "
            "inference will run float32")
    return entry
