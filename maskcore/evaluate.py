"""Score a run's faces and verdicts against Pascal VOC boxes: ``maskcore evaluate RESULTS --boxes DIR``.

A detected face matches a boxed face when their IoU is at least 0.5; boxes are matched greedily,
the most confident detection first, each boxed face at most once (as in the VOC and COCO
protocols). From the matches:

* detection: recall over all boxed faces and over those at least 24 and 32 px wide, precision,
  false boxes a picture (detections matching no box; some are real faces nobody boxed);
* labels on matched faces: accuracy over all classes, accuracy over with/without only, and
  precision and recall per class;
* average precision per class (VOC all-point, a detection's confidence being its face score times
  the probability of its label) and their mean;
* the verdict a picture answers, "someone here is not wearing a mask properly" (a box of
  ``without_mask`` or ``mask_weared_incorrect``): accuracy and recall over pictures; and, from
  the boxes alone, the recall a perfect reader would reach if it saw every face at least 8, 12,
  16 or 24 px wide and none smaller (how far the verdict hangs on tiny faces), with the width of
  the widest such face in each picture the run missed.

Only pictures that have a box file are scored. ``split`` keeps the pictures of one part of the
by-picture split (:func:`maskcore.voc.split_of_digest` of each row's sha256).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from maskcore.detector import box_areas, overlap_areas
from maskcore.errors import UsageError
from maskcore.metrics import format_interval, ratio, wilson
from maskcore.results import open_results
from maskcore.voc import BoxFile, scan_voc, split_of_digest

__all__ = ["IOU", "SIZES", "SPLITS", "UNSAFE", "DetectionTally", "evaluate_run",
           "format_report", "iou_matrix", "match"]

IOU = 0.5
#: What ``--split`` can name: a part of a split, or ``all`` of the pictures.
SPLITS = ("all", "train", "val", "test")
SIZES = (0, 24, 32)  # recall is given for boxed faces at least this wide (px)
#: Smallest face widths (px) for the verdict recall a perfect reader of faces that size reaches.
CEILING_SIZES = (8, 12, 16, 24)
#: Labels that make a picture's verdict "someone here is not wearing a mask properly".
UNSAFE = ("without_mask", "mask_weared_incorrect")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), as (N, M)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    inter = overlap_areas(a[:, None, :], b)
    out: np.ndarray = inter / np.maximum(box_areas(a)[:, None] + box_areas(b)[None, :] - inter,
                                         1e-9)
    return out


def match(det: np.ndarray, conf: np.ndarray, gt: np.ndarray, iou: float = IOU) -> np.ndarray:
    """For each detection, the index of the boxed face it matches, or -1 (greedy by ``conf``)."""
    out = np.full(len(det), -1, np.int64)
    m = iou_matrix(det, gt)
    taken = np.zeros(len(gt), bool)
    for d in np.argsort(-conf, kind="stable"):
        cand = np.flatnonzero(~taken & (m[d] >= iou)) if len(gt) else np.zeros(0, np.int64)
        if len(cand):
            g = cand[np.argmax(m[d, cand])]
            taken[g] = True
            out[d] = g
    return out


@dataclass
class DetectionTally:
    """Boxed faces found by size and false boxes, counted picture by picture at IoU 0.5: what
    ``maskcore evaluate`` reports and what the detector's training chooses its threshold by."""

    boxed: Counter[int] = field(default_factory=Counter)  # boxed faces at least SIZES wide
    found: Counter[int] = field(default_factory=Counter)  # of those, matched by a detection
    detections: int = 0
    false_boxes: int = 0  # detections that match no boxed face
    pictures: int = 0

    def add(self, det: np.ndarray, conf: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Count one picture; returns :func:`match`'s answer for its detections."""
        m = match(det, conf, gt)
        widths = gt[:, 2] - gt[:, 0]
        hit = np.zeros(len(gt), bool)
        hit[m[m >= 0]] = True
        for size in SIZES:
            self.boxed[size] += int((widths >= size).sum())
            self.found[size] += int((hit & (widths >= size)).sum())
        self.detections += len(det)
        self.false_boxes += int((m < 0).sum())
        self.pictures += 1
        return m

    def recalls(self) -> dict[str, float | None]:
        """Recall of the boxed faces at least each of :data:`SIZES` wide, named as the report
        names them (None where no face is that wide)."""
        return {("recall" if s == 0 else f"recall_{s}px"): ratio(self.found[s], self.boxed[s])
                for s in SIZES}


@dataclass
class _Picture:
    boxes: BoxFile
    row: dict[str, Any]
    faces: list[dict[str, Any]]


def evaluate_run(results: str | Path, boxes: str | Path, *, split: str = "all") -> dict[str, Any]:
    """Score the run in ``results`` (a batch job's output folder, or a worker's ``s3://``
    results prefix) against the VOC files in ``boxes`` (a folder of ``*.xml``, or a dataset
    folder holding ``annotations/``).

    Raises:
        UsageError: the folders do not hold what is needed, or no picture could be scored.
    """
    if split not in SPLITS:
        raise UsageError(f"--split takes {', '.join(SPLITS)}, not {split!r}")
    res = str(results)
    local = None if res.startswith("s3://") else Path(res)
    if local is not None and (local / "manifest.jsonl").is_file() \
            and not (local / "faces.jsonl").is_file():
        raise UsageError(f"{res}: no faces.jsonl; run the batch with --faces auto")
    box_dir = Path(boxes)
    if (box_dir / "annotations").is_dir():
        box_dir = box_dir / "annotations"
    voc = scan_voc(box_dir)
    run = open_results(res)
    pictures: list[_Picture] = []
    for row in run.rows:
        name = PurePosixPath(row["source"]).name
        if name not in voc or row["status"] != "ok":
            continue
        if split != "all" and split_of_digest(row["sha256"]) != split:
            continue
        pictures.append(_Picture(voc[name], row, run.faces_of(row["source"])))
    if not pictures:
        raise UsageError(f"no picture of {res} has a box file in {box_dir}"
                         + (f" in the {split} split" if split != "all" else ""))
    report = _score(pictures, split)
    report["faces_mode"] = run.summary.get("faces_mode", "auto")
    if report["faces_mode"] == "off":
        # Pictures classified whole have no faces: zeros here would read as a detector that
        # finds nothing. Their verdicts still answer the question, so those stay.
        for key in ("detection", "labels", "average_precision", "mean_average_precision"):
            report[key] = None
    return report


def _score(pictures: list[_Picture], split: str) -> dict[str, Any]:
    classes = sorted({b.label for p in pictures for b in p.boxes.boxes}
                     | {f["label"] for p in pictures for f in p.faces} - {"uncertain"})
    tally = DetectionTally()
    pairs: list[tuple[str, str]] = []  # (true, predicted) on matched faces
    ap_dets: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    ap_gts: Counter[str] = Counter()
    verdict_hits = 0
    widest_unsafe: list[float] = []  # per picture with someone unmasked: its widest such face
    missed_widths: list[float] = []  # the same, for those the run did not flag
    for p in pictures:
        gt = np.array([b.xyxy for b in p.boxes.boxes], np.float32).reshape(-1, 4)
        det = np.array([[f["x0"], f["y0"], f["x1"], f["y1"]] for f in p.faces],
                       np.float32).reshape(-1, 4)
        m = tally.add(det, np.array([f["face_score"] for f in p.faces], np.float32), gt)
        for d, g in enumerate(m):
            if g >= 0:
                pairs.append((p.boxes.boxes[g].label, p.faces[d]["label"]))
        # Average precision per class: the detections labelled c against the boxes of class c.
        for c in classes:
            gt_c = np.array([b.xyxy for b in p.boxes.boxes if b.label == c],
                            np.float32).reshape(-1, 4)
            ap_gts[c] += len(gt_c)
            idx = [i for i, f in enumerate(p.faces) if f["label"] == c]
            if not idx:
                continue
            conf_c = np.array([p.faces[i]["face_score"] * p.faces[i]["probabilities"].get(c, 0.0)
                               for i in idx], np.float32)
            m_c = match(det[idx], conf_c, gt_c)
            ap_dets[c] += [(float(s), bool(g >= 0)) for s, g in zip(conf_c, m_c, strict=True)]
        truth = any(b.label in UNSAFE for b in p.boxes.boxes)
        said = p.row["label"] in UNSAFE
        verdict_hits += truth == said
        if truth:
            widest = max(b.width for b in p.boxes.boxes if b.label in UNSAFE)
            widest_unsafe.append(widest)
            if not said:
                missed_widths.append(widest)
    per_class = {}
    for c in classes:
        tp = sum(t == c and q == c for t, q in pairs)
        n_true = sum(t == c for t, _ in pairs)
        n_pred = sum(q == c for _, q in pairs)
        per_class[c] = {"faces": n_true, "recall": ratio(tp, n_true),
                        "precision": ratio(tp, n_pred), "recall_ci95": wilson(tp, n_true)}
    ap = {c: _average_precision(ap_dets[c], ap_gts[c]) for c in classes if ap_gts[c]}
    two = [(t, q) for t, q in pairs if t in ("with_mask", "without_mask")]
    n_pics = len(pictures)
    verdict_pos = len(widest_unsafe)
    verdict_tp = verdict_pos - len(missed_widths)
    return {
        "split": split,
        "pictures": n_pics,
        "boxed_faces": tally.boxed[0],
        "detections": tally.detections,
        "iou": IOU,
        "detection": {
            **tally.recalls(),
            "faces_24px": tally.boxed[24], "faces_32px": tally.boxed[32],
            "precision": ratio(tally.detections - tally.false_boxes, tally.detections),
            "false_boxes_per_picture": round(tally.false_boxes / n_pics, 3),
        },
        "labels": {
            "matched_faces": len(pairs),
            "accuracy": ratio(sum(t == q for t, q in pairs), len(pairs)),
            "accuracy_with_without": ratio(sum(t == q for t, q in two), len(two)),
            "per_class": per_class,
        },
        "average_precision": ap,
        "mean_average_precision": round(float(np.mean(list(ap.values()))), 4) if ap else None,
        "verdict": {
            "question": "is someone here not wearing a mask properly?",
            "accuracy": ratio(verdict_hits, n_pics),
            "accuracy_ci95": wilson(verdict_hits, n_pics),
            "recall": ratio(verdict_tp, verdict_pos),
            "recall_ci95": wilson(verdict_tp, verdict_pos),
            "pictures_with_someone_unmasked": verdict_pos,
            "recall_ceiling": {str(w): ratio(sum(x >= w for x in widest_unsafe), verdict_pos)
                               for w in CEILING_SIZES},
            "missed_widest_face_px": sorted(round(x, 1) for x in missed_widths),
        },
    }


def _average_precision(dets: list[tuple[float, bool]], n_gt: int) -> float:
    """VOC all-point average precision."""
    if not n_gt:
        return 0.0
    dets = sorted(dets, key=lambda d: -d[0])
    tp = np.cumsum([d[1] for d in dets]) if dets else np.zeros(0)
    fp = np.cumsum([not d[1] for d in dets]) if dets else np.zeros(0)
    recall = np.concatenate([[0.0], tp / n_gt, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-9), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return round(float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1])), 4)


def format_report(report: dict[str, Any]) -> str:
    """The figures as a short table for a terminal."""
    d, lab, v = report["detection"], report["labels"], report["verdict"]

    def pct(x: float | None) -> str:
        return "  n/a" if x is None else f"{x:.3f}"

    head = (f"{report['pictures']} pictures ({report['split']}), {report['boxed_faces']} boxed "
            f"faces, {report['detections']} detections, IoU {report['iou']}")
    if d is None:
        return "\n".join([head, "the run classified every picture whole (--faces off): no faces "
                          "to score, only its verdicts", ""] + _verdict_lines(v, pct))
    lines = [
        head,
        "",
        "detection",
        f"  recall, all faces          {pct(d['recall'])}",
        f"  recall, faces >= 24 px     {pct(d['recall_24px'])}   ({d['faces_24px']} faces)",
        f"  recall, faces >= 32 px     {pct(d['recall_32px'])}   ({d['faces_32px']} faces)",
        f"  precision                  {pct(d['precision'])}",
        f"  false boxes a picture      {d['false_boxes_per_picture']:.3f}",
        "",
        f"labels on {lab['matched_faces']} matched faces",
        f"  accuracy (all classes)     {pct(lab['accuracy'])}",
        f"  accuracy (with / without)  {pct(lab['accuracy_with_without'])}",
    ]
    for c, m in lab["per_class"].items():
        lines.append(f"  {c:<26} recall {pct(m['recall'])} {format_interval(m['recall_ci95'])}  precision "
                     f"{pct(m['precision'])}  ({m['faces']} faces)")
    lines += ["", "average precision"]
    for c, ap in report["average_precision"].items():
        lines.append(f"  {c:<26} {ap:.3f}")
    lines.append(f"  {'mean':<26} {pct(report['mean_average_precision'])}")
    return "\n".join(lines + [""] + _verdict_lines(v, pct))


def _verdict_lines(v: dict[str, Any], pct: Callable[[float | None], str]) -> list[str]:
    return [
        f"verdict: {v['question']}",
        f"  accuracy                   {pct(v['accuracy'])}   95% CI {v['accuracy_ci95']}",
        f"  recall                     {pct(v['recall'])}   95% CI {v['recall_ci95']}"
        f"   ({v['pictures_with_someone_unmasked']} such pictures)",
        "  recall if every face this wide were found and read right, none smaller:",
        "    " + "  ".join(f">= {w} px {pct(r)}" for w, r in v["recall_ceiling"].items()),
        "  missed pictures, their widest unmasked face (px): "
        + (", ".join(f"{x:g}" for x in v["missed_widest_face_px"]) or "none"),
    ]
