"""Box datasets for training: Pascal VOC pictures -> one face crop per box, split by picture.

A box dataset is ``ROOT/images/<name>`` with ``ROOT/annotations/<stem>.xml`` (the layout of the
shared face-mask-scenes). Each box is cut with :func:`maskcore.preprocess.crop_face`, the very
function the per-face stage runs on detected boxes at inference, with the same margin (recorded
in the model card as ``face_crop``), so a face looks the same to the classifier in training and
in serving. Faces of one picture always share a split: the split is
:func:`maskcore.voc.split_of_digest` of the picture's bytes, so exact copies share it too.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskcore.errors import DatasetError, ImageDecodeError
from maskcore.pool import default_workers, make_pool
from maskcore.preprocess import DEFAULT_SPEC, PreprocessSpec, crop_face, decode
from maskcore.progress import Progress
from maskcore.voc import BoxFile, read_voc, split_of_digest

__all__ = ["BoxFaces", "SIZE_BUCKETS", "audit_boxes", "box_files", "is_box_dataset",
           "load_box_dataset"]

#: Face widths the audit counts faces in (px, lower bounds).
SIZE_BUCKETS = (0, 16, 24, 32, 64)


def is_box_dataset(root: str | Path) -> bool:
    """Whether ``root`` looks like a VOC dataset (``images/`` and ``annotations/``)."""
    r = Path(root)
    return (r / "images").is_dir() and (r / "annotations").is_dir()


@dataclass
class BoxFaces:
    """Every face crop of a box dataset, with its label, split and where it came from."""

    root: Path
    x: np.ndarray  # (N, H, W, 3) float32 model inputs
    labels: list[str]  # class name per crop
    splits: list[str]  # "train", "val" or "test" per crop
    sources: list[str]  # "<picture>#<box index>" per crop
    widths: list[float]  # box width in pixels per crop
    pictures: int
    unreadable: list[str]  # pictures (or annotations) that could not be used, with why
    fingerprint: str  # sha256 over the pictures' sha256s

    def subset(self, split: str) -> tuple[np.ndarray, list[str], list[str]]:
        """Inputs, labels and sources of one split."""
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return self.x[keep], [self.labels[i] for i in keep], [self.sources[i] for i in keep]


def _crops_of(job: tuple[str, str, PreprocessSpec, float]
              ) -> tuple[str, str, list[tuple[str, float, np.ndarray]], str]:
    """One picture -> (its name, its sha256, [(label, width, crop)], error)."""
    image_path, xml_path, spec, margin = job
    name = Path(image_path).name
    try:
        boxes: BoxFile = read_voc(xml_path)
        data = Path(image_path).read_bytes()
    except (OSError, DatasetError) as exc:
        return name, "", [], str(exc)
    digest = hashlib.sha256(data).hexdigest()
    try:
        pic = decode(data, spec)
    except ImageDecodeError as exc:
        return name, digest, [], str(exc)
    out = []
    for b in boxes.boxes:
        x0, y0, x1, y1 = b.xyxy
        # Box files give pixels of the stored picture; clip again against what decoded.
        x0, x1 = max(0.0, min(x0, pic.width)), max(0.0, min(x1, pic.width))
        y0, y1 = max(0.0, min(y0, pic.height)), max(0.0, min(y1, pic.height))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        out.append((b.label, x1 - x0, crop_face(pic, (x0, y0, x1, y1), spec, margin)))
    return name, digest, out, ""


def load_box_dataset(root: str | Path, *, spec: PreprocessSpec = DEFAULT_SPEC,
                     margin: float = 0.1, workers: int | None = None,
                     progress: bool = True) -> BoxFaces:
    """Crop every boxed face of a VOC dataset, in parallel, through the shared crop function.

    Raises:
        DatasetError: not a box dataset, or no face in it.
    """
    r = Path(root).expanduser().resolve()
    jobs = [(str(image), str(xml), spec, margin) for image, xml in box_files(r)]
    workers = default_workers() if workers is None else workers
    xs: list[np.ndarray] = []
    labels, splits, sources, widths, unreadable, digests = [], [], [], [], [], []
    bar = Progress(len(jobs), "pictures", enabled=progress)
    with make_pool(workers) as pool:
        for name, digest, crops, error in pool.map(_crops_of, jobs, chunksize=8):
            bar.update()
            if error:
                unreadable.append(f"{name}: {error}")
                continue
            digests.append(digest)
            split = split_of_digest(digest)
            for k, (label, width, crop) in enumerate(crops):
                xs.append(crop)
                labels.append(label)
                splits.append(split)
                sources.append(f"{name}#{k}")
                widths.append(width)
    bar.close()
    if not xs:
        raise DatasetError(f"{root}: no readable boxed face")
    h, w = spec.size
    return BoxFaces(
        root=r, x=np.stack(xs) if xs else np.zeros((0, h, w, 3), np.float32), labels=labels,
        splits=splits, sources=sources, widths=widths, pictures=len(digests),
        unreadable=unreadable,
        fingerprint=hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest())


def box_files(root: str | Path) -> list[tuple[Path, Path]]:
    """Each (picture, its VOC file) of a box dataset, in the order of the VOC files' names; a
    VOC file whose picture is missing is left out.

    Raises:
        DatasetError: ``root`` is not a box dataset.
    """
    r = Path(root)
    if not is_box_dataset(r):
        raise DatasetError(f"{root}: not a box dataset (needs images/ and annotations/)")
    pairs = [(_image_for(r / "images", xml), xml)
             for xml in sorted((r / "annotations").glob("*.xml"))]
    return [(image, xml) for image, xml in pairs if image is not None]


def _image_for(images: Path, xml: Path) -> Path | None:
    for candidate in (images / f"{xml.stem}.jpg", images / f"{xml.stem}.png",
                      images / f"{xml.stem}.jpeg"):
        if candidate.is_file():
            return candidate
    found = sorted(images.glob(f"{xml.stem}.*"))
    return found[0] if found else None


def audit_boxes(faces: BoxFaces) -> dict[str, Any]:
    """Faces per class, per size and per split, pictures, and what could not be used."""
    def bucket(w: float) -> str:
        low = max(b for b in SIZE_BUCKETS if w >= b)
        nxt = [b for b in SIZE_BUCKETS if b > low]
        return f"{low}-{nxt[0]} px" if nxt else f">= {low} px"

    per_class_size: dict[str, Counter[str]] = {}
    for label, w in zip(faces.labels, faces.widths, strict=True):
        per_class_size.setdefault(label, Counter())[bucket(w)] += 1
    return {
        "root_name": faces.root.name,
        "pictures": faces.pictures,
        "faces": len(faces.labels),
        "faces_per_class": dict(sorted(Counter(faces.labels).items())),
        "faces_per_class_and_width": {c: dict(sorted(v.items()))
                                      for c, v in sorted(per_class_size.items())},
        "faces_per_split": dict(sorted(Counter(faces.splits).items())),
        "unreadable": faces.unreadable,
        "fingerprint": faces.fingerprint,
    }


def format_box_audit(report: dict[str, Any]) -> str:
    """The box audit as a few lines for a terminal."""
    lines = [f"box dataset {report['root_name']}: {report['pictures']} pictures, "
             f"{report['faces']} faces; per split {report['faces_per_split']}"]
    for c, n in report["faces_per_class"].items():
        sizes = ", ".join(f"{k} {v}" for k, v in report["faces_per_class_and_width"][c].items())
        lines.append(f"  {c:<24} {n:>6}   by width: {sizes}")
    if report["unreadable"]:
        lines.append(f"  unreadable: {len(report['unreadable'])} (first: {report['unreadable'][0]})")
    return "\n".join(lines)
