"""Fine-tuning the face detector on a box dataset (``maskcore train-detector``).

This module holds the data side (pictures, augmentation, anchor matching, the threshold's
choice) and imports no TensorFlow, so the command's options load without it; the network's
training is :mod:`maskcore.retinaface_tf`, imported when the job runs.

The bundled RetinaFace network was trained on WIDER FACE. It finds faces well, but not the
faces these annotators box: masked faces, small street faces, and none of the blurred people
they left unboxed. This module teaches it theirs, on the training pictures of a Pascal VOC
dataset (split by picture, :func:`maskcore.voc.split_of_digest`), and changes nothing else:

1. :class:`maskcore.retinaface_tf.OnnxConvNet` reads the network's ONNX graph into TensorFlow:
   its convolutions (batch norms are already folded into them), activations, FPN upsampling and
   the class and box heads. The ONNX file stays the source of truth for the architecture.
2. The training pictures are drawn at random scales, flipped, lit differently and placed on a
   square canvas (:func:`training_sample`); anchors are matched to the hand-drawn boxes as
   RetinaFace was trained (IoU >= 0.35, and each box's best anchor), with its multibox loss
   (cross-entropy on the positives and the hardest negatives, 7 for each positive, plus
   smooth L1 on the positives' box codes).
3. The trained weights are written back into the same ONNX graph (``OnnxConvNet.write_onnx``),
   so the detector's pre- and post-processing (:mod:`maskcore.detector`) stay as they are; the
   file is checked against the TensorFlow network on a validation picture.
4. The score threshold is chosen on the validation pictures (never the test ones):
   :func:`choose_threshold`.
5. With ``refit`` (the default), the network is then fitted again from the base weights, by the
   same recipe, on the training and validation pictures together, and keeps that threshold: the
   validation pictures are a fifth more faces to learn from, and fewer training pictures had
   made a worse detector (docs/MODEL.md).
6. :func:`make_detector_int8` writes the int8 variant that CPUs run (its neck in int8,
   calibrated on training pictures) and keeps it only if it finds the validation pictures'
   faces as the float32 network does (:data:`INT8_RECALL_LOSS`, :data:`INT8_EXTRA_FALSE`).
   ``maskcore quantize --detector`` does the same for a detector trained before.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskcore import provenance
from maskcore.boxdata import box_files
from maskcore.card import file_sha256
from maskcore.detector import (
    DEFAULT_DETECTOR,
    DetectorSpec,
    FaceDetector,
    anchors,
    encode_boxes,
    letterbox,
    to_canvases,
)
from maskcore.errors import DatasetError
from maskcore.evaluate import DetectionTally, iou_matrix
from maskcore.preprocess import decode
from maskcore.progress import say
from maskcore.voc import read_voc, split_of_digest

__all__ = ["BASE_DETECTOR", "DetectorTraining", "INT8_FILE", "choose_threshold",
           "make_detector_int8", "match_anchors", "read_splits", "run_detector_training",
           "threshold_sweep", "training_sample"]

#: The network as it was trained on WIDER FACE (``models/extract_face_detector.py`` reproduces it).
BASE_DETECTOR = DEFAULT_DETECTOR.parent / "retinaface_widerface.onnx"
#: The thresholds :func:`choose_threshold` considers.
THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
#: Most false boxes a validation picture may average at the chosen threshold. Each false box
#: read as unmasked flags a masked picture; the product's goal allows 0.5, and this leaves room.
FALSE_BOX_BUDGET = 0.35
#: The int8 variant's file name, beside face_detector.onnx.
INT8_FILE = "face_detector.int8.onnx"
#: The int8 variant is kept when, on the validation pictures at the card's threshold, its
#: recall (all faces, and faces >= 32 px) is at most this much under float32's ...
INT8_RECALL_LOSS = 0.01
#: ... and it draws at most this many more false boxes a picture.
INT8_EXTRA_FALSE = 0.05
#: Training pictures (evenly spaced) that calibrate the int8 variant's activation ranges.
INT8_CALIBRATION = 120


@dataclass(frozen=True)
class DetectorTraining:
    """How the detector is fine-tuned. The larger draws (``zoom_*``) were chosen on the scenes'
    validation pictures (docs/MODEL.md); the rest is RetinaFace's own recipe where it has one."""

    epochs: int = 25
    learning_rate: float = 1e-4
    batch_size: int = 8
    canvas: int = 640  # square training canvas; pictures are drawn at a random scale onto it
    # Longer side a training picture is drawn at, drawn uniformly: around the 640 px that
    # inference uses, so that faces are seen a little smaller and larger than they will be.
    scale_range: tuple[int, int] = (480, 800)
    # Share of the pictures drawn larger than the canvas instead (longer side ``zoom_range``
    # times the canvas) and cut to it: the street pictures' faces are small, and without
    # large ones the network forgets the close-ups' faces it found before.
    zoom_share: float = 0.3
    zoom_range: tuple[float, float] = (1.25, 3.0)
    positive_iou: float = 0.35  # an anchor this close to a box learns it (RetinaFace's value)
    negatives_per_positive: int = 7  # hardest negatives kept for the loss (RetinaFace's value)
    box_weight: float = 2.0  # weight of the box loss against the class loss (RetinaFace's value)
    seed: int = 0
    thresholds: tuple[float, ...] = THRESHOLDS
    # Fit again on the training and validation pictures once the threshold is chosen (above).
    refit: bool = True


def match_anchors(priors: np.ndarray, boxes: np.ndarray, cfg: DetectorTraining,
                  spec: DetectorSpec) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's class (1: a face) and the box code it should output.

    An anchor learns the box it overlaps most when their IoU is at least ``positive_iou``;
    every box also gets its best anchor, however small the box, so no face goes untaught.
    """
    labels = np.zeros(len(priors), np.int32)
    codes = np.zeros((len(priors), 4), np.float32)
    if not len(boxes):
        return labels, codes
    corners = np.concatenate([priors[:, :2] - priors[:, 2:] / 2,
                              priors[:, :2] + priors[:, 2:] / 2], 1)
    overlap = iou_matrix(corners, boxes)
    best_box, best_iou = overlap.argmax(1), overlap.max(1)
    best_anchor = overlap.argmax(0)
    best_iou[best_anchor] = 1.0
    best_box[best_anchor] = np.arange(len(boxes))
    labels[best_iou >= cfg.positive_iou] = 1
    return labels, encode_boxes(priors, boxes[best_box], spec.variance)


def training_sample(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                    cfg: DetectorTraining, spec: DetectorSpec
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One augmented picture on the square training canvas: the network's input (S, S, 3),
    BGR minus the mean as in :func:`maskcore.detector.to_canvases`, and its boxes there.

    Args:
        image: the upright RGB picture, uint8 (h, w, 3).
        boxes: (n, 4) its faces, in its pixels.
    """
    s = cfg.canvas
    h, w = image.shape[:2]
    if rng.random() < cfg.zoom_share:
        scale = s * rng.uniform(*cfg.zoom_range) / max(h, w)
    else:
        scale = rng.uniform(*cfg.scale_range) / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    pic = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR),
                     np.float32)
    b = boxes * scale
    if rng.random() < 0.5:
        pic = pic[:, ::-1]
        b = np.stack([nw - b[:, 2], b[:, 1], nw - b[:, 0], b[:, 3]], 1)
    ox, oy = rng.integers(0, max(nw - s, 0) + 1), rng.integers(0, max(nh - s, 0) + 1)
    pic = pic[oy:oy + s, ox:ox + s]
    pic = np.clip(pic * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255)
    b = b - np.array([ox, oy, ox, oy], np.float32)
    # A face whose centre was cut off is not taught as a face (RetinaFace's own crop rule).
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    b = b[(cx >= 0) & (cx < pic.shape[1]) & (cy >= 0) & (cy < pic.shape[0])]
    b = np.clip(b, 0, [pic.shape[1], pic.shape[0], pic.shape[1], pic.shape[0]])
    b = b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]
    canvas = np.zeros((s, s, 3), np.float32)
    canvas[:pic.shape[0], :pic.shape[1]] = pic[:, :, ::-1] - np.asarray(spec.mean_bgr, np.float32)
    return canvas, b.astype(np.float32).reshape(-1, 4)


@dataclass
class _Picture:
    image: np.ndarray  # upright RGB uint8, as the batch job decodes it
    boxes: np.ndarray  # (n, 4) in its pixels


def read_splits(root: Path) -> dict[str, list[_Picture]]:
    """The training and validation pictures of a VOC dataset (split by picture), with their
    boxes; each file is read once."""
    out: dict[str, list[_Picture]] = {"train": [], "val": []}
    for path, xml in box_files(root):
        data = path.read_bytes()
        split = split_of_digest(hashlib.sha256(data).hexdigest())
        if split not in out:
            continue
        pic = decode(data)
        boxes = np.array([b.xyxy for b in read_voc(xml).boxes], np.float32).reshape(-1, 4)
        out[split].append(_Picture(np.asarray(pic.image, np.uint8), boxes / pic.factor))
    return out


def threshold_sweep(detector: FaceDetector, pictures: Sequence[_Picture],
                    thresholds: Sequence[float]) -> dict[float, dict[str, float]]:
    """Recall by face size and false boxes a picture at each threshold, as ``maskcore
    evaluate`` counts them.

    The network runs once, with ``detector`` set at the lowest threshold; a higher threshold
    keeps the boxes scored at or above it. That is what the detector would find at that
    threshold: NMS goes by score, so a box below a threshold never removes one above it.
    """
    found = detector.detect([Image.fromarray(p.image) for p in pictures])
    sweep = {}
    for t in thresholds:
        tally = DetectionTally()
        for pic, det in zip(pictures, found, strict=True):
            kept = det[det.score >= t]
            tally.add(kept.xyxy, kept.score, pic.boxes)
        # No face that wide: nothing found, 0 (the rule compares these numbers).
        figures: dict[str, float] = {k: r or 0.0 for k, r in tally.recalls().items()}
        figures["false_boxes_per_picture"] = round(tally.false_boxes / max(len(pictures), 1), 4)
        sweep[t] = figures
    return sweep


def choose_threshold(sweep: dict[float, dict[str, float]]) -> float:
    """The threshold that finds the most faces with at most :data:`FALSE_BOX_BUDGET` false
    boxes a picture (the highest threshold when none keeps to it)."""
    within = [t for t, f in sweep.items() if f["false_boxes_per_picture"] <= FALSE_BOX_BUDGET]
    if not within:
        return max(sweep)
    return max(within, key=lambda t: (sweep[t]["recall"], -t))


def run_detector_training(dataset: str | Path, out: str | Path, *,
                          base: str | Path = BASE_DETECTOR,
                          cfg: DetectorTraining | None = None) -> dict[str, Any]:
    """Fine-tune the detector on ``dataset``'s training pictures; write
    ``out/face_detector.onnx`` and its card ``out/face_detector.json``. Returns the card.

    Raises:
        DatasetError: the dataset is not a VOC one, or it has no training or validation picture.
        ModelError: the base network cannot be read, or the written file disagrees with the
            trained network.
    """
    cfg = cfg or DetectorTraining()
    t0 = time.monotonic()
    root, out_dir = Path(dataset), Path(out)
    spec = DetectorSpec(canvas=cfg.canvas)
    splits = read_splits(root)
    train, val = splits["train"], splits["val"]
    if not train or not val:
        raise DatasetError(f"{root}: {len(train)} training and {len(val)} validation pictures; "
                           "both are needed")
    say(f"fine-tuning the face detector on {len(train)} training pictures "
        f"({sum(len(p.boxes) for p in train)} faces) of {root.name}; "
        f"{len(val)} validation pictures choose its threshold")
    # TensorFlow only now: the module (and its options) load without it.
    from maskcore.retinaface_tf import OnnxConvNet, fit, parity

    priors = anchors(spec, cfg.canvas, cfg.canvas)

    def fit_on(pictures: list[_Picture]) -> tuple[OnnxConvNet, list[dict[str, Any]]]:
        """The base network fitted on ``pictures``, from the same seed each time."""
        rng = np.random.default_rng(cfg.seed)
        net = OnnxConvNet(base)

        def batch(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            samples = [training_sample(pictures[i].image, pictures[i].boxes, rng, cfg, spec)
                       for i in indices]
            targets = [match_anchors(priors, b, cfg, spec) for _, b in samples]
            return (np.stack([s[0] for s in samples]), np.stack([t[0] for t in targets]),
                    np.stack([t[1] for t in targets]))

        return net, fit(net, batch, len(pictures), len(priors), cfg, rng)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / DEFAULT_DETECTOR.with_suffix(".onnx").name
    card_path = out_dir / DEFAULT_DETECTOR.name

    def write(net: OnnxConvNet, card: dict[str, Any]) -> tuple[float, FaceDetector]:
        """Write ``net`` and ``card`` (with the file's sha256); returns the largest difference
        between the written file and the network, and the written file as a detector at the
        lowest threshold considered (the sweep's)."""
        net.write_onnx(onnx_path)
        card["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        detector = FaceDetector(card_path, device="cpu", score_threshold=min(cfg.thresholds))
        return parity(net, detector, val[0].image), detector

    net, history = fit_on(train)
    card = _card(onnx_path, base, spec, cfg, root, train, val, history)
    diff, detector = write(net, card)
    sweep = threshold_sweep(detector, val, cfg.thresholds)
    chosen = choose_threshold(sweep)
    card["training"].update(parity_max_abs_diff=diff, validation={str(t): f for t, f in sweep.items()})
    f = sweep[chosen]
    say(f"threshold {chosen} (validation: recall {f['recall']:.3f} of all faces, "
        f"{f['recall_32px']:.3f} of faces >= 32 px, {f['false_boxes_per_picture']:.3f} false "
        "boxes a picture)")
    if cfg.refit:
        both = train + val
        faces = int(sum(len(p.boxes) for p in both))
        say(f"fitting again on the training and validation pictures together ({len(both)} "
            f"pictures, {faces} faces), keeping threshold {chosen}")
        net, refit_history = fit_on(both)
        card["provenance"]["fine_tuned_on"] = (
            f"{root.name}: the training and validation pictures of its by-picture split "
            "(maskcore/voc.py), boxes as drawn (the card's box_adjust is none); the threshold was "
            "chosen on the validation pictures with the network fitted on the training ones alone")
        card["training"]["refit"] = {
            "pictures": len(both), "faces": faces,
            "history": refit_history, "parity_max_abs_diff": write(net, card)[0]}
    card["spec"]["score_threshold"] = chosen
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    card = make_detector_int8(card_path, train, val)
    card["training"]["seconds"] = round(time.monotonic() - t0)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    say(f"wrote {onnx_path} and {card_path}")
    return card


def make_detector_int8(card_path: Path, train: Sequence[_Picture], val: Sequence[_Picture]
                       ) -> dict[str, Any]:
    """Write the int8 variant of the detector whose card is ``card_path`` (:data:`INT8_FILE`
    beside it), check it on the validation pictures at the card's threshold, and list it in
    the card when it passes (else remove it). Returns the card, as written.

    Args:
        card_path: ``face_detector.json``; its ``onnx_file`` is the float32 network.
        train: pictures that calibrate the activation ranges (every k-th is used).
        val: pictures the two variants are compared on.
    """
    from maskcore.quantize import quantize_detector  # onnx's quantizer: the training side's

    card: dict[str, Any] = json.loads(card_path.read_text())
    card.pop("int8", None)  # an earlier variant's entry goes, whatever becomes of this one
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    fp32 = FaceDetector(card_path, device="cpu", precision="fp32")
    spec = fp32.spec
    picked = list(train[:: max(len(train) // INT8_CALIBRATION, 1)][:INT8_CALIBRATION])
    # One square size for every canvas (the calibration stacks their activations), padded as
    # the network's input always is.
    canvases = to_canvases([letterbox(Image.fromarray(p.image), spec)[0] for p in picked], spec,
                           (spec.canvas, spec.canvas))
    int8_path = card_path.with_name(INT8_FILE)
    say(f"int8 variant: calibrating on {len(picked)} training pictures ...")
    made = quantize_detector(card_path.with_name(card["onnx_file"]), int8_path, canvases)
    card["int8"] = {"onnx_file": INT8_FILE, "onnx_sha256": file_sha256(int8_path), **made}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    threshold = spec.score_threshold
    int8 = FaceDetector(card_path, device="cpu", precision="int8")
    a, b = (threshold_sweep(d, val, [threshold])[threshold] for d in (fp32, int8))
    passed = (b["recall"] >= a["recall"] - INT8_RECALL_LOSS
              and b["recall_32px"] >= a["recall_32px"] - INT8_RECALL_LOSS
              and b["false_boxes_per_picture"] <= a["false_boxes_per_picture"] + INT8_EXTRA_FALSE)
    card["int8"]["parity"] = {
        "pictures": len(val), "split": "val", "threshold": threshold, "fp32": a, "int8": b,
        "rule": f"recall (all, >= 32 px) at most {INT8_RECALL_LOSS} under float32's and at most "
                f"{INT8_EXTRA_FALSE} more false boxes a picture",
        "passed": passed}
    say(f"int8 variant (validation, {len(val)} pictures): recall {b['recall']:.3f} / "
        f"{b['recall_32px']:.3f} against {a['recall']:.3f} / {a['recall_32px']:.3f}, false "
        f"boxes a picture {b['false_boxes_per_picture']:.3f} against "
        f"{a['false_boxes_per_picture']:.3f}: " + ("kept" if passed else "dropped"))
    if not passed:
        report = card.pop("int8")
        card.setdefault("training", {})["int8_dropped"] = report
        int8_path.unlink()
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def _card(onnx_path: Path, base: str | Path, spec: DetectorSpec, cfg: DetectorTraining,
          root: Path, train: list[_Picture], val: list[_Picture],
          history: list[dict[str, Any]]) -> dict[str, Any]:
    settings = asdict(spec)
    return {
        "name": "RetinaFace MobileNet-0.25, fine-tuned on face-mask street pictures",
        "onnx_file": onnx_path.name,
        "onnx_sha256": "",  # filled in as the file is written
        "input": "input: float32 (N, 3, H, W), BGR minus mean_bgr, H and W multiples of 32",
        "outputs": "loc (N, A, 4) box codes, conf (N, A, 2) softmax [background, face], "
                   "landmarks (N, A, 10) (not fine-tuned)",
        "spec": {k: settings[k] for k in ("canvas", "fine_canvas", "fine_max_face",
                                          "score_threshold", "nms_iou", "nested",
                                          "min_face", "max_faces", "mean_bgr", "box_adjust")},
        "provenance": {
            "base": f"{Path(base).name} (sha256 "
                    f"{hashlib.sha256(Path(base).read_bytes()).hexdigest()}): "
                    "biubug6/Pytorch_Retinaface, mobilenet0.25_Final.pth (MIT licence), "
                    "trained on WIDER FACE; reproduced by python models/extract_face_detector.py",
            "fine_tuned_on": f"{root.name}: the training pictures of its by-picture split "
                             "(maskcore/voc.py), boxes as drawn (the card's box_adjust is none)",
            "reproduce": "make train-detector",
            "licence_file": "FACE_DETECTOR_LICENSE.txt",
            "note": "WIDER FACE, the training data of the base weights, is released for "
                    "non-commercial research purposes.",
        },
        "training": {
            "config": asdict(cfg),
            "pictures": {"train": len(train), "val": len(val)},
            "faces": {"train": int(sum(len(p.boxes) for p in train)),
                      "val": int(sum(len(p.boxes) for p in val))},
            "history": history,
            "threshold_rule": f"the most faces found on the validation pictures with at most "
                              f"{FALSE_BOX_BUDGET} false boxes a picture",
        },
        "versions": provenance.versions(),
        "machine": provenance.machine(),
    }
