"""Masks drawn on bare close-up faces, worn right and worn wrongly, for the third class.

The close-ups teach ``with_mask`` and ``without_mask``; the only wrongly worn masks the
classifier saw were street faces of 20 to 100 px. Read whole, close-ups with a mask worn wrongly
were called ``with_mask`` (masks drawn this way on the validation close-ups: v12 found 7 of 127,
and read 96 of them ``with_mask``): it had learned "a mask is there", not "where it is". So the
training job (``maskcore train --drawn-masks``) draws a mask on bare faces of the close-ups, in
one of :data:`WAYS`, where the face's five landmarks say the nose, mouth and chin are:

* ``worn_right``: from the bridge of the nose to under the chin (``with_mask``, so that a drawn
  mask is not itself what tells the wrongly worn class);
* ``nose_bare``: under the nose, the mouth and chin covered;
* ``chin_bare``: nose and mouth covered, the chin out under it;
* ``on_chin``: pulled down onto the chin, nose and mouth bare.

The three wrong ways are the ones the project's issue names. The landmarks come from the
RetinaFace network as trained on WIDER FACE (``models/retinaface_widerface.onnx``; the
fine-tuned detector's landmark head was not trained). Every drawn picture stays in the split of
the close-up it was drawn on, so the test close-ups' faces never reach training. A drawn mask is
a flat polygon with pleats and ear loops, not a photograph: figures measured on drawn masks are
a stand-in for real ones, and docs/MODEL.md says how far they go.

Training side only (ONNX Runtime, Pillow and NumPy; no TensorFlow).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskcore.detector import DEFAULT_DETECTOR, DetectorSpec, anchors, canvas_of, decode_centres, suppress
from maskcore.errors import ImageDecodeError
from maskcore.manifest import MASKED, WRONGLY_WORN
from maskcore.preprocess import DEFAULT_SPEC, PreprocessSpec, decode

__all__ = ["WAYS", "LandmarkFinder", "draw_mask", "drawn_close_ups", "way_for"]

#: Each way of wearing a drawn mask, and the class it teaches.
WAYS: dict[str, str] = {
    "worn_right": MASKED,
    "nose_bare": WRONGLY_WORN,
    "chin_bare": WRONGLY_WORN,
    "on_chin": WRONGLY_WORN,
}
#: How often each way is drawn (a bare close-up gets one drawn mask): the right way as often as
#: the three wrong ones together would make a drawn mask itself a sign of the third class.
WAY_SHARES: dict[str, float] = {"worn_right": 0.4, "nose_bare": 0.2, "chin_bare": 0.2,
                                "on_chin": 0.2}

#: The WIDER FACE network, whose landmark head was trained (the fine-tuned detector's was not).
LANDMARK_NETWORK = DEFAULT_DETECTOR.parent / "retinaface_widerface.onnx"
#: Close-ups are drawn on at least this many pixels a side (JPEGs decoded no smaller).
DRAW_SIDE = 512

# A drawn face must be a close-up's face, turned little: the face's box covers at least this
# share of the picture, the eyes are this far apart against the box's width, and the nose lies
# this near the middle of the eyes (a share of their distance). Turned faces put a frontal
# polygon where no face is.
_MIN_SHARE = 0.2
_MIN_EYES = 0.25
_MAX_NOSE_OFF = 0.35
_SCORE = 0.8

# Mask colours (RGB): surgical blue and green, white, black, navy, grey, pink.
_COLOURS = ((172, 205, 230), (150, 190, 170), (236, 236, 236), (35, 35, 38), (60, 80, 140),
            (195, 195, 200), (225, 175, 185))


class LandmarkFinder:
    """The one face of a close-up and its five landmarks (eyes, nose, mouth corners)."""

    def __init__(self, network: Path = LANDMARK_NETWORK, threads: int | None = None) -> None:
        from maskcore.engine import open_session  # ONNX Runtime, loaded when used

        self.session, _ = open_session(network, "cpu", threads)
        self.spec = DetectorSpec(fine_canvas=0, score_threshold=_SCORE)

    def find(self, image: Image.Image) -> np.ndarray | None:
        """(5, 2) landmarks in ``image``'s pixels (left eye, right eye, nose, left and right
        mouth corner, as seen), or None when the picture is not a close-up of one face turned
        little (see the module's notes)."""
        canvas, scale = canvas_of(image, self.spec)
        loc, conf, marks = self.session.run(None, {"input": canvas[None]})
        score = conf[0, :, 1]
        keep = np.flatnonzero(score >= _SCORE)
        if not len(keep):
            return None
        prior = anchors(self.spec, *canvas.shape[1:])[keep]
        centre, size = decode_centres(prior, loc[0, keep], self.spec.variance)
        boxes = (np.concatenate([centre - size / 2, centre + size / 2], 1) / scale
                 ).astype(np.float32)
        chosen, _ = suppress(boxes, score[keep].astype(np.float32), self.spec.nms_iou)
        if len(chosen) != 1:  # another face too: whose picture is it?
            return None
        i = int(chosen[0])
        # Each landmark is coded as a box centre is, against the same anchor.
        v_c = self.spec.variance[0]
        points = (prior[i, None, :2] + marks[0, keep[i]].reshape(5, 2) * v_c * prior[i, None, 2:]
                  ) / scale
        x0, y0, x1, y1 = boxes[i]
        eyes = float(np.linalg.norm(points[1] - points[0]))
        nose_off = abs(float(points[2, 0] - (points[0, 0] + points[1, 0]) / 2)) / max(eyes, 1e-6)
        if (x1 - x0) * (y1 - y0) < _MIN_SHARE * image.width * image.height \
                or eyes < _MIN_EYES * (x1 - x0) or nose_off > _MAX_NOSE_OFF:
            return None
        out: np.ndarray = points.astype(np.float64)
        return out


@dataclass(frozen=True)
class _Frame:
    """The face's own axes: ``across`` from the left eye to the right one, ``down`` from between
    the eyes to the mouth; lengths in eye distances across and eye-to-mouth distances down."""

    origin: np.ndarray
    across: np.ndarray
    down: np.ndarray
    eyes: float
    drop: float

    def at(self, a: float, b: float) -> tuple[float, float]:
        p = self.origin + a * self.eyes * self.across + b * self.drop * self.down
        return float(p[0]), float(p[1])


def _frame(marks: np.ndarray) -> _Frame:
    left, right, _nose, mouth_l, mouth_r = marks
    origin = (left + right) / 2
    drop_vec = (mouth_l + mouth_r) / 2 - origin
    drop = float(np.linalg.norm(drop_vec))
    down = drop_vec / max(drop, 1e-6)
    across = np.array([-down[1], down[0]])
    if float(np.dot(across, right - left)) < 0:
        across = -across
    return _Frame(origin, across, down, float(np.linalg.norm(right - left)), drop)


def _outline(marks: np.ndarray, f: _Frame, way: str, rng: random.Random
             ) -> list[tuple[float, float]]:
    """The mask's polygon on the face of ``marks`` (whose axes are ``f``): a top edge, then the
    bottom edge back, in picture pixels."""
    nose = float(np.dot(marks[2] - f.origin, f.down)) / max(f.drop, 1e-6)  # about 0.55
    wide = rng.uniform(0.92, 1.08)
    jitter = rng.uniform(-0.04, 0.04)
    if way == "worn_right":
        top, bottom = 0.25 + jitter, 1.65
    elif way == "nose_bare":
        top, bottom = nose + 0.2 + jitter, 1.65
    elif way == "chin_bare":
        top, bottom = 0.25 + jitter, 1.2 + abs(jitter)
    elif way == "on_chin":
        top, bottom = 1.12 + jitter, 1.78
    else:
        raise ValueError(f"unknown way {way!r}; one of {', '.join(WAYS)}")
    sag = 0.06  # the top edge dips a little at the sides, the bottom edge rounds under the chin
    upper = [f.at(a * wide, top + sag * abs(a)) for a in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    mid = (top + bottom) / 2
    lower = [f.at(1.0 * wide, max(mid, bottom - 0.6)), f.at(0.8 * wide, bottom - 0.22),
             f.at(0.35 * wide, bottom - 0.03), f.at(0.0, bottom), f.at(-0.35 * wide, bottom - 0.03),
             f.at(-0.8 * wide, bottom - 0.22), f.at(-1.0 * wide, max(mid, bottom - 0.6))]
    return upper + lower


def draw_mask(image: Image.Image, marks: np.ndarray, way: str, rng: random.Random
              ) -> Image.Image:
    """``image`` (RGB) with a mask drawn on the face of ``marks`` (:meth:`LandmarkFinder.find`)
    worn ``way`` (one of :data:`WAYS`); ``rng`` draws its colour, size and exact place."""
    f = _frame(marks)
    polygon = _outline(marks, f, way, rng)
    colour = rng.choice(_COLOURS)
    shade = tuple(int(c * 0.8) for c in colour)
    layer = Image.new("RGB", image.size, colour)
    pen = ImageDraw.Draw(layer)
    line = max(1, round(f.eyes * 0.03))
    ys = [p[1] for p in polygon]
    across = f.across * image.width * 2
    for t in (0.3, 0.5, 0.7):  # pleats, along the face's axis across
        y = min(ys) + t * (max(ys) - min(ys))
        x_mid = sum(p[0] for p in polygon) / len(polygon)
        pen.line([(x_mid - across[0], y - across[1]), (x_mid + across[0], y + across[1])],
                 fill=shade, width=line)
    alpha = Image.new("L", image.size, 0)
    ImageDraw.Draw(alpha).polygon(polygon, fill=255)
    alpha = alpha.filter(ImageFilter.GaussianBlur(max(0.6, f.eyes * 0.015)))
    out = Image.composite(layer, image.convert("RGB"), alpha)
    loops = ImageDraw.Draw(out)
    for corner, ear in ((polygon[0], f.at(-1.35, 0.15)), (polygon[4], f.at(1.35, 0.15))):
        loops.line([corner, ear], fill=shade, width=line)
    return out


def way_for(digest: str, seed: int) -> tuple[str, random.Random]:
    """The way one close-up (``digest``: the sha256 of its bytes) gets its drawn mask, and the
    random numbers for drawing it: a function of the picture and the seed alone, so a run draws
    the same masks whatever order it reads the files in."""
    rng = random.Random(hashlib.sha256(f"{seed}:{digest}".encode()).digest())
    names: Sequence[str] = list(WAY_SHARES)
    return rng.choices(names, weights=[WAY_SHARES[n] for n in names])[0], rng


def drawn_close_ups(files: Sequence[tuple[Path, str]], seed: int,
                    finder: LandmarkFinder | None = None,
                    spec: PreprocessSpec = DEFAULT_SPEC) -> Iterator[tuple[int, str, Image.Image]]:
    """For each bare close-up ``(path, sha256 of its bytes)`` whose face can carry a drawn mask
    (:meth:`LandmarkFinder.find`): its index in ``files``, the way its mask is worn
    (:func:`way_for`) and the picture with the mask drawn, upright RGB, at least
    :data:`DRAW_SIDE` px on its shorter side where the original was (JPEGs are decoded
    shrunk to that, since the classifier reads 128 px). Unreadable files are passed over."""
    finder = finder or LandmarkFinder()
    for i, (path, digest) in enumerate(files):
        try:
            picture = decode(path.read_bytes(), spec, draft=DRAW_SIDE)
        except (OSError, ImageDecodeError):
            continue
        marks = finder.find(picture.image)
        if marks is None:
            continue
        way, rng = way_for(digest, seed)
        yield i, way, draw_mask(picture.image, marks, way, rng)
