"""The analysis stage: decoded pictures in, per-picture and per-face probabilities out.

With the face stage (``--faces auto``, the default) every picture goes through the detector in
batches; each face found is cut with the shared :func:`~maskcore.preprocess.crop_face` (a margin
around the box, in the original picture's pixels) and all crops of a batch go through the
classifier together. A picture where no face is found is classified whole, as without the stage,
so a close-up the detector misses loses nothing. Without the stage (``--faces off``) every
picture is classified whole.

:class:`Analyzer` is what every runner calls, wherever its engines live: the local runner in each
decode process (CPU) or in the main process (GPU), the Ray runner in its actors. Results are
plain arrays (:class:`PictureResult`), small enough to send between processes; rows are built
from them in one place, :class:`maskcore.manifest.RowBuilder`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from maskcore.decode import DecodedItem, RefFacts, finer_picture, stack_inputs
from maskcore.detector import DetectorSpec, FaceDetector
from maskcore.engine import Device, Engine, Precision
from maskcore.errors import UsageError
from maskcore.manifest import WRONGLY_WORN
from maskcore.preprocess import CROP_MARGIN, Picture, crop_face, to_input
from maskcore.settings import ENV

__all__ = ["Analyzer", "FaceOptions", "PictureResult", "load_analyzer", "open_analyzer",
           "read_closeup", "results_id"]

#: A picture whose largest face covers at least this share of its area is a close-up of that
#: face: the classifier sees the whole picture for it, as close-ups are seen in training (a
#: pair's face network its crop as well: :func:`read_closeup`), and that face alone decides
#: the picture's verdict (the small boxes around a close-up were mostly false or background
#: faces on the close-ups' validation split). Chosen on the validation pictures of both
#: datasets; ``FaceOptions.closeup`` overrides it (1 turns it off).
CLOSEUP_SHARE = 0.2

#: In a close-up, another box lying at least this share of its own area over the main face's
#: box is a part of that face, not a face: the detector, tuned on street faces of about 20 px,
#: often boxes the two halves of a face that fills the picture (before its refit, 327 of the
#: 4,096 pictures of face-mask had such a second face row, some labelled otherwise than the
#: face). On the close-ups' training and validation splits, 0.3 takes 288 boxes away, every one
#: of a sample a part of the main face or no face at all; under 0.3 real people beside the main
#: face start to go. The verdict cannot change (a close-up's main face decides alone); its face
#: rows and counts do (docs/MODEL.md).
CLOSEUP_PART = 0.3


def read_closeup(whole: np.ndarray, crop: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A close-up's main face from its two reads: the whole picture (a pair's close-up network)
    and the face's crop (its face network). Probabilities over ``classes``.

    Each network is blind to the other's wrongly worn masks: on the validation pictures the
    close-up network found 0 of 8 photographed street faces with one (crops read whole) and the
    face network 18 of 127 masks drawn on close-ups (docs/MODEL.md). So that class takes the
    larger of its two probabilities, and the other classes, which both networks learned from
    photographs, share the rest as the mean of the two reads shares it. Chosen on the validation
    pictures: the close-ups, the drawn masks and street faces cut out as close-ups got no more
    wrong, and more masks worn wrongly were found on both kinds (docs/MODEL.md).
    """
    mean: np.ndarray = (np.asarray(whole, np.float32) + np.asarray(crop, np.float32)) / 2
    if WRONGLY_WORN not in classes:
        return mean
    j = list(classes).index(WRONGLY_WORN)
    top = max(float(whole[j]), float(crop[j]))
    rest = float(mean.sum() - mean[j])
    out: np.ndarray = mean * np.float32((1 - top) / rest if rest > 0 else 0.0)
    out[j] = top
    return out


@dataclass(frozen=True)
class FaceOptions:
    """The face stage's settings; picklable, so decode processes and Ray actors rebuild it."""

    mode: str = "auto"  # "auto": detect faces; "off": classify every picture whole
    detector: str | None = None  # the detector's card; None for the bundled one
    margin: float | None = None  # None: the classifier card's crop margin, else CROP_MARGIN
    closeup: float = CLOSEUP_SHARE  # 1.0 turns the close-up rule off
    overrides: dict[str, Any] = field(default_factory=dict)  # DetectorSpec fields to change

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "off"):
            raise UsageError(f"--faces takes auto or off, not {self.mode!r}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def __hash__(self) -> int:
        return hash((self.mode, self.detector, self.margin, self.closeup,
                     tuple(sorted(self.overrides.items()))))


@dataclass
class PictureResult(RefFacts):
    """One picture's outcome: an error, or probabilities for it whole and/or for its faces."""

    whole: np.ndarray | None = None  # (C,) when the picture was classified whole
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    face_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    face_proba: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    faces_checked: bool = False  # whether the detector looked at this picture
    closeup_face: int = -1  # the main face of a close-up (it alone decides the verdict), or -1


class Analyzer:
    """The classifier engine and, with the face stage, the detector: decoded items -> results.

    Args:
        engine: the classifier.
        faces: the face stage's settings.
        device: where the detector runs (the classifier's engine was opened already).
        threads: the detector's CPU threads.
        precision: the detector's variant, by the classifier's rule (``auto``: int8 on a CPU
            where its card lists one).
    """

    def __init__(self, engine: Engine, faces: FaceOptions = FaceOptions(), *,
                 device: Device = "auto", threads: int | None = None,
                 precision: Precision = "auto") -> None:
        self.engine = engine
        self.faces = faces
        card = faces.detector or os.environ.get(ENV["detector"]) or None
        self.detector = FaceDetector(card, device=device, threads=threads, precision=precision,
                                     **faces.overrides) if faces.enabled else None
        crop = engine.card.extra.get("face_crop", {})
        self.margin = faces.margin if faces.margin is not None else \
            float(crop.get("margin", CROP_MARGIN))

    @property
    def detector_spec(self) -> DetectorSpec | None:
        """What decode tasks prepare pictures for (None: only the whole-picture input)."""
        return self.detector.spec if self.detector is not None else None

    @property
    def detector_id(self) -> str:
        return self.detector.model_id if self.detector is not None else ""

    @property
    def detector_precision(self) -> str:
        """The detector's variant as loaded (``fp32`` or ``int8``; ``auto`` without one): what
        decode processes and Ray actors load, so that they run the detector the rows name."""
        return self.detector.precision if self.detector is not None else "auto"

    def infer(self, items: list[DecodedItem]) -> list[PictureResult]:
        """Results for a batch of decoded items, in order (errors pass through)."""
        results = [PictureResult(it.ref, it.sha256, it.width, it.height, it.error, it.error_kind)
                   for it in items]
        ok = [i for i, it in enumerate(items) if it.ok]
        if not ok:
            return results
        if self.detector is None:
            inputs, owners = self._whole_inputs(items, ok)
        else:
            inputs, owners = self._face_inputs(self.detector, items, ok, results)
        n_classes = len(self.engine.classes)
        for i in ok:
            r = results[i]
            r.face_proba = np.zeros((len(r.boxes), n_classes), np.float32)
        # Whole pictures and face crops go in separate calls when the model reads them with
        # different networks (a whole-picture branch); otherwise in one.
        kinds = (True, False) if self.engine.has_whole_branch else (None,)
        read: dict[tuple[int, int, bool], np.ndarray] = {}
        for kind in kinds:
            picked = [j for j, o in enumerate(owners) if kind is None or o[2] == kind]
            if not picked:
                continue
            proba = self.engine.predict(
                stack_inputs([inputs[j] for j in picked], self.engine.spec), whole=bool(kind))
            for j, p in zip(picked, proba, strict=True):
                read[owners[j]] = p
        for (i, k, whole), p in read.items():
            r = results[i]
            if k < 0:
                r.whole = p
            elif k != r.closeup_face:
                r.face_proba[k] = p
            elif whole:  # a close-up's main face: read whole, and as a crop by a pair
                crop = read.get((i, k, False))
                r.face_proba[k] = p if crop is None else \
                    read_closeup(p, crop, self.engine.classes)
        return results

    def _whole_inputs(self, items: list[DecodedItem], ok: list[int]
                      ) -> tuple[list[np.ndarray], list[tuple[int, int, bool]]]:
        """Every picture's whole input, owned by (its result index, -1, True)."""
        inputs = []
        for i in ok:
            whole = items[i].whole
            if whole is None:  # decoded for the face stage: make the whole input from it
                pic = items[i].picture
                assert pic is not None, "a decoded item holds pixels in one form or the other"
                whole = to_input(pic.image, self.engine.spec)
            inputs.append(whole)
        return inputs, [(i, -1, True) for i in ok]

    def _face_inputs(self, detector: FaceDetector, items: list[DecodedItem], ok: list[int],
                     results: list[PictureResult]
                     ) -> tuple[list[np.ndarray], list[tuple[int, int, bool]]]:
        """Finds the faces (filling each result's boxes) and returns the classifier's inputs,
        each owned by (result index, face index, whether it is the whole picture), or (result
        index, -1, True) for a picture with no face, classified whole."""
        spec = self.engine.spec
        pics: list[Picture] = []
        canvases: list[np.ndarray] = []
        for i in ok:
            pic, canvas = items[i].picture, items[i].canvas
            assert pic is not None and canvas is not None, \
                "the face stage needs decoded pictures and their canvases"
            pics.append(pic)
            canvases.append(canvas)
        sizes = [(p.width, p.height) for p in pics]
        found = detector.first_look(canvases, [items[i].canvas_scale for i in ok],
                                    [p.factor for p in pics], sizes)

        def finer(j: int) -> tuple[Image.Image, float]:
            # A picture that gets a second look is decoded again if the decoder had shrunk
            # it, and its faces are then cut from the finer picture too.
            pics[j] = pic = finer_picture(items[ok[j]], spec, detector.spec)
            return pic.image, pic.factor

        found = detector.look_again(
            found, sizes, self.faces.closeup if self.faces.closeup < 1 else None, finer)
        inputs: list[np.ndarray] = []
        owners: list[tuple[int, int, bool]] = []
        for i, pic, det in zip(ok, pics, found, strict=True):
            r = results[i]
            r.faces_checked = True
            if len(det) == 0:
                inputs.append(to_input(pic.image, spec))
                owners.append((i, -1, True))
                continue
            r.closeup_face = det.main_face(self.faces.closeup, (pic.width, pic.height))
            if r.closeup_face >= 0:
                det, r.closeup_face = det.without_parts_of(r.closeup_face, CLOSEUP_PART)
            r.boxes, r.face_scores = det.xyxy, det.score
            for k, box in enumerate(det.xyxy):
                # A close-up's main face is read from the whole picture, as close-ups are seen
                # in training, and by a pair's face network from its crop too (read_closeup).
                if k == r.closeup_face:
                    inputs.append(to_input(pic.image, spec))
                    owners.append((i, k, True))
                if k != r.closeup_face or self.engine.has_whole_branch:
                    inputs.append(crop_face(pic, box, spec, self.margin))
                    owners.append((i, k, False))
        return inputs, owners


def load_analyzer(model_path: str, precision: str, faces: FaceOptions, threads: int | None,
                  device: Device = "cpu", detector_precision: str | None = None) -> Analyzer:
    """An analyzer from picklable arguments (decode processes and Ray actors build theirs so):
    the classifier's file and variant, and the detector's variant (``precision`` when None),
    as the driver's analyzer settled them."""
    engine = Engine(model_path, device=device, threads=threads,
                    precision=precision)  # type: ignore[arg-type]
    return Analyzer(engine, faces, device=device, threads=threads,
                    precision=detector_precision or precision)  # type: ignore[arg-type]


def open_analyzer(model: str | None, *, device: str = "auto", precision: str = "auto",
                  faces: FaceOptions = FaceOptions()) -> Analyzer:
    """The analyzer a job's driver opens, running its models here on ``device`` (a runner that
    runs them elsewhere opens it through :meth:`maskcore.runners.Runner.open_analyzer`).

    Raises:
        UsageError: options that cannot work here (``device="cuda"`` without CUDA).
        ModelError: the classifier or the detector cannot be used.
    """
    engine = Engine(model, device=device, precision=precision)  # type: ignore[arg-type]
    return Analyzer(engine, faces, device=engine.device,  # type: ignore[arg-type]
                    precision=precision)  # type: ignore[arg-type]


def results_id(analyzer: Analyzer) -> str:
    """What a worker's ledger files results under: the classifier's id, and the detector's with
    the face stage (rows of another pair of models are not "done" for this one)."""
    engine_id = analyzer.engine.model_id
    return f"{engine_id}-{analyzer.detector_id}" if analyzer.detector_id else engine_id
