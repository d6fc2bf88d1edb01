"""Fine-tuning the face detector: the ONNX graph read into TensorFlow computes what ONNX Runtime
does, weights written back land in the right places, augmented boxes stay on their faces, anchors
are matched as RetinaFace was trained, and the job runs end to end on a VOC dataset made here."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from maskcore.cli import main
from maskcore.detector import DetectorSpec, FaceDetector, anchors, decode_boxes
from maskcore.detector_training import (
    BASE_DETECTOR,
    FALSE_BOX_BUDGET,
    INT8_FILE,
    DetectorTraining,
    choose_threshold,
    match_anchors,
    training_sample,
)
from maskcore.retinaface_tf import OnnxConvNet
from maskcore.voc import split_of_digest
from tests.test_boxdata import make_voc


def _onnx_outputs(path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    loc, conf, _ = sess.run(None, {"input": x})
    return loc, conf[..., 1]


@pytest.fixture(scope="module")
def net() -> OnnxConvNet:
    return OnnxConvNet(BASE_DETECTOR)


def test_the_graph_in_tensorflow_computes_what_onnx_runtime_does(net):
    x = np.random.default_rng(0).normal(0, 60, (2, 3, 64, 96)).astype(np.float32)
    loc, score = _onnx_outputs(BASE_DETECTOR, x)
    logits, codes = net(tf.constant(x.transpose(0, 2, 3, 1)))
    assert codes.shape == loc.shape == (2, len(anchors(DetectorSpec(), 64, 96)), 4)
    np.testing.assert_allclose(tf.nn.softmax(logits)[..., 1].numpy(), score, atol=1e-4)
    np.testing.assert_allclose(codes.numpy(), loc, atol=1e-3)


def test_weights_written_back_land_where_they_came_from(net, tmp_path):
    """Unchanged weights give back the same tensors; a changed one changes only its own."""
    out = tmp_path / "same.onnx"
    net.write_onnx(out)
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(BASE_DETECTOR).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # A depthwise kernel is stored (channels, 1, kh, kw) in ONNX and (kh, kw, channels, 1) in TF.
    name = next(iter(net.depthwise))
    kernel = net.variables[name]
    original = kernel.numpy()
    try:
        kernel.assign(original * 2)
        net.write_onnx(out)
        changed = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    finally:
        kernel.assign(original)
    assert [k for k in before if not np.array_equal(before[k], changed[k])] == [name]
    np.testing.assert_allclose(changed[name], before[name] * 2)


def test_augmented_boxes_stay_on_their_faces():
    """A bright square on a dark picture: after scaling, flipping and placing, the box handed to
    the loss still covers the bright pixels, on every draw."""
    cfg, spec = DetectorTraining(canvas=256, scale_range=(200, 320)), DetectorSpec()
    image = np.zeros((120, 200, 3), np.uint8)
    image[30:70, 140:180] = 255
    box = np.array([[140, 30, 180, 70]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        canvas, boxes = training_sample(image, box, rng, cfg, spec)
        assert canvas.shape == (256, 256, 3)
        if not len(boxes):  # the square was placed off the canvas
            continue
        x0, y0, x1, y1 = boxes[0].round().astype(int)
        bright = canvas.sum(-1) > canvas.min() + 300
        inside = bright[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
        assert inside.size and inside.mean() > 0.95
        assert bright.sum() <= (x1 - x0 + 2) * (y1 - y0 + 2)  # nothing bright outside the box


def test_every_box_gets_an_anchor_however_small():
    spec, cfg = DetectorSpec(), DetectorTraining()
    priors = anchors(spec, 128, 128)
    boxes = np.array([[10, 10, 14, 14], [40, 40, 100, 100]], np.float32)  # 4 px and 60 px
    labels, codes = match_anchors(priors, boxes, cfg, spec)
    score = labels.astype(np.float32)
    found = decode_boxes(codes, score, DetectorSpec(score_threshold=0.5, nms_iou=1.0), 1.0,
                         (128, 128), (128, 128))
    # Each positive anchor's code decodes to the box it learns; both boxes are among them.
    for b in boxes:
        assert np.abs(found.xyxy - b).max(axis=1).min() < 1e-3
    assert 2 <= labels.sum() < len(labels) / 10
    assert match_anchors(priors, np.zeros((0, 4), np.float32), cfg, spec)[0].sum() == 0


def test_the_threshold_finds_most_faces_within_the_false_box_budget():
    sweep = {0.5: {"recall": 0.9, "false_boxes_per_picture": FALSE_BOX_BUDGET + 0.1},
             0.6: {"recall": 0.85, "false_boxes_per_picture": FALSE_BOX_BUDGET},
             0.7: {"recall": 0.85, "false_boxes_per_picture": 0.1},
             0.8: {"recall": 0.7, "false_boxes_per_picture": 0.05}}
    assert choose_threshold(sweep) == 0.6
    over = {t: {"recall": 0.9, "false_boxes_per_picture": 9.0} for t in (0.5, 0.7)}
    assert choose_threshold(over) == 0.7


def test_the_job_fine_tunes_on_training_pictures_and_writes_a_detector_that_serves(tmp_path):
    data = make_voc(tmp_path / "boxes", pictures=14)
    splits = {p.name: split_of_digest(hashlib.sha256(p.read_bytes()).hexdigest())
              for p in (data / "images").iterdir()}
    assert {"train", "val"} <= set(splits.values())
    out = tmp_path / "det"
    result = CliRunner().invoke(main, ["train-detector", str(data), "--out", str(out),
                                       "--epochs", "1"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "face_detector.json").read_text())
    training = card["training"]
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val")}
    assert training["pictures"] == counts  # the test pictures stay out
    assert training["parity_max_abs_diff"] <= 1e-3
    assert card["spec"]["score_threshold"] in DetectorTraining().thresholds
    assert card["spec"]["box_adjust"] == [1.0, 1.0, 0.0, 0.0]
    assert set(training["validation"]) == {str(t) for t in DetectorTraining().thresholds}
    assert card["onnx_sha256"] == hashlib.sha256((out / "face_detector.onnx").read_bytes()
                                                 ).hexdigest()
    # The weights moved, and the result loads and runs as a detector.
    base = {i.name: numpy_helper.to_array(i) for i in onnx.load(BASE_DETECTOR).graph.initializer}
    tuned = onnx.load(out / "face_detector.onnx").graph.initializer
    assert any(not np.array_equal(base[i.name], numpy_helper.to_array(i)) for i in tuned)
    detector = FaceDetector(out / "face_detector.json", device="cpu", threads=1)
    detector.detect([Image.open(next((data / "images").iterdir())).convert("RGB")])
    # The int8 variant was made from it and checked on the validation pictures: listed with
    # its file when it passed, else recorded as dropped and its file gone.
    int8 = card.get("int8") or training["int8_dropped"]
    parity = int8["parity"]
    assert parity["pictures"] == counts["val"] and {"fp32", "int8"} <= set(parity)
    assert parity["passed"] == ("int8" in card) == (out / INT8_FILE).is_file()
    if parity["passed"]:
        assert card["int8"]["onnx_sha256"] == hashlib.sha256((out / INT8_FILE).read_bytes()
                                                             ).hexdigest()
        assert detector.precision == "int8"
    # The written network is the second fit, on training and validation pictures together.
    refit = training["refit"]
    assert refit["pictures"] == counts["train"] + counts["val"]
    assert len(refit["history"]) == 1 and refit["parity_max_abs_diff"] <= 1e-3
    assert "validation pictures" in card["provenance"]["fine_tuned_on"]
    assert card["versions"]["keras"] and card["machine"]["cores"] >= 1
    first = tmp_path / "first"
    result = CliRunner().invoke(main, ["train-detector", str(data), "--out", str(first),
                                       "--epochs", "1", "--no-refit"])
    assert result.exit_code == 0, result.output
    alone = json.loads((first / "face_detector.json").read_text())
    assert "refit" not in alone["training"]
    # Same seed, same threshold sweep; only the pictures of the written fit differ.
    assert alone["training"]["validation"] == training["validation"]
    assert alone["spec"]["score_threshold"] == card["spec"]["score_threshold"]
    assert alone["onnx_sha256"] != card["onnx_sha256"]


def test_a_folder_without_boxes_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(main, ["train-detector", str(tmp_path), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not a box dataset" in result.output
