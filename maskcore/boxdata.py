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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskcore.errors import DatasetError, ImageDecodeError
from maskcore.pool import default_workers, make_pool
from maskcore.preprocess import CROP_MARGIN, DEFAULT_SPEC, PreprocessSpec, crop_face, decode
from maskcore.progress import Progress
from maskcore.voc import BoxFile, read_voc, split_of_digest

__all__ = ["BoxFaces", "BoxInventory", "SIZE_BUCKETS", "audit_boxes", "box_files",
           "box_inventory", "format_box_audit", "is_box_dataset", "load_box_dataset"]

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
    boxes_clipped: int = 0  # boxes that ran over their picture's edge (kept, cut to it)
    boxes_dropped: int = 0  # boxes left out: no class, no area, no coordinates
    redundant_copies: int = 0  # pictures that are exact copies of another (one split for all)
    # VOC files whose picture is not in images/, and files in images/ no VOC file names.
    without_picture: list[str] = field(default_factory=list)
    without_boxes: list[str] = field(default_factory=list)

    def subset(self, split: str) -> tuple[np.ndarray, list[str], list[str]]:
        """Inputs, labels and sources of one split."""
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return self.x[keep], [self.labels[i] for i in keep], [self.sources[i] for i in keep]


@dataclass
class _Cropped:
    """What one picture of a box dataset gave: its faces, or why it gave none."""

    name: str
    digest: str = ""  # sha256 of the picture's bytes
    crops: list[tuple[str, float, np.ndarray]] = field(default_factory=list)  # label, width, crop
    error: str = ""
    clipped: int = 0  # boxes cut to the picture's edge
    dropped: int = 0  # boxes left out (see BoxFile.dropped; and those under a pixel once decoded)


def _crops_of(job: tuple[str, str, PreprocessSpec, float]) -> _Cropped:
    """One picture -> its face crops, through the shared crop function."""
    image_path, xml_path, spec, margin = job
    out = _Cropped(Path(image_path).name)
    try:
        boxes: BoxFile = read_voc(xml_path)
        data = Path(image_path).read_bytes()
    except (OSError, DatasetError) as exc:
        out.error = str(exc)
        return out
    out.digest = hashlib.sha256(data).hexdigest()
    out.clipped, out.dropped = boxes.clipped, boxes.dropped
    try:
        pic = decode(data, spec)
    except ImageDecodeError as exc:
        out.error = str(exc)
        return out
    for b in boxes.boxes:
        x0, y0, x1, y1 = b.xyxy
        # Box files give pixels of the stored picture; clip again against what decoded.
        x0, x1 = max(0.0, min(x0, pic.width)), max(0.0, min(x1, pic.width))
        y0, y1 = max(0.0, min(y0, pic.height)), max(0.0, min(y1, pic.height))
        if x1 - x0 < 1 or y1 - y0 < 1:
            out.dropped += 1
            continue
        out.crops.append((b.label, x1 - x0, crop_face(pic, (x0, y0, x1, y1), spec, margin)))
    return out


def load_box_dataset(root: str | Path, *, spec: PreprocessSpec = DEFAULT_SPEC,
                     margin: float = CROP_MARGIN, workers: int | None = None,
                     progress: bool = True) -> BoxFaces:
    """Crop every boxed face of a VOC dataset, in parallel, through the shared crop function.

    Raises:
        DatasetError: not a box dataset, or no face in it.
    """
    r = Path(root).expanduser().resolve()
    found = box_inventory(r)
    jobs = [(str(image), str(xml), spec, margin) for image, xml in found.pairs]
    workers = default_workers() if workers is None else workers
    xs: list[np.ndarray] = []
    labels, splits, sources, widths, unreadable, digests = [], [], [], [], [], []
    clipped = dropped = 0
    bar = Progress(len(jobs), "pictures", enabled=progress)
    with make_pool(workers) as pool:
        for done in pool.map(_crops_of, jobs, chunksize=8):
            bar.update()
            if done.error:
                unreadable.append(f"{done.name}: {done.error}")
                continue
            digests.append(done.digest)
            clipped, dropped = clipped + done.clipped, dropped + done.dropped
            split = split_of_digest(done.digest)
            for k, (label, width, crop) in enumerate(done.crops):
                xs.append(crop)
                labels.append(label)
                splits.append(split)
                sources.append(f"{done.name}#{k}")
                widths.append(width)
    bar.close()
    if not xs:
        raise DatasetError(f"{root}: no readable boxed face")
    return BoxFaces(
        root=r, x=np.stack(xs), labels=labels, splits=splits, sources=sources, widths=widths,
        pictures=len(digests), unreadable=unreadable,
        fingerprint=hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest(),
        boxes_clipped=clipped, boxes_dropped=dropped,
        redundant_copies=len(digests) - len(set(digests)),
        without_picture=found.without_picture, without_boxes=found.without_boxes)


@dataclass
class BoxInventory:
    """What a box dataset's two folders hold, paired."""

    pairs: list[tuple[Path, Path]]  # (picture, its VOC file), in the VOC files' name order
    without_picture: list[str]  # VOC files (names) whose picture is missing
    without_boxes: list[str]  # files in images/ (names) that no VOC file belongs to


def box_inventory(root: str | Path) -> BoxInventory:
    """Pair each VOC file of a box dataset with its picture, and list what pairs with nothing.

    Raises:
        DatasetError: ``root`` is not a box dataset.
    """
    r = Path(root)
    if not is_box_dataset(r):
        raise DatasetError(f"{root}: not a box dataset (needs images/ and annotations/)")
    pairs, without_picture = [], []
    for xml in sorted((r / "annotations").glob("*.xml")):
        image = _image_for(r / "images", xml)
        if image is None:
            without_picture.append(xml.name)
        else:
            pairs.append((image, xml))
    paired = {image.name for image, _ in pairs}
    without_boxes = sorted(p.name for p in (r / "images").iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.name not in paired)
    return BoxInventory(pairs, without_picture, without_boxes)


def box_files(root: str | Path) -> list[tuple[Path, Path]]:
    """Each (picture, its VOC file) of a box dataset, in the order of the VOC files' names; a
    VOC file whose picture is missing is left out (:func:`box_inventory` lists those).

    Raises:
        DatasetError: ``root`` is not a box dataset.
    """
    return box_inventory(root).pairs


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
        "boxes_clipped": faces.boxes_clipped,
        "boxes_dropped": faces.boxes_dropped,
        "redundant_copies": faces.redundant_copies,
        "without_picture": faces.without_picture,
        "without_boxes": faces.without_boxes,
        "unreadable": faces.unreadable,
        "fingerprint": faces.fingerprint,
    }


def format_box_audit(report: dict[str, Any]) -> str:
    """The box audit as a few lines for a terminal."""
    per_split = ", ".join(f"{k} {report['faces_per_split'].get(k, 0):,}"
                          for k in ("train", "val", "test"))
    lines = [f"box dataset {report['root_name']}: {report['pictures']:,} pictures, "
             f"{report['faces']:,} faces (by picture: {per_split})"]
    for c, n in report["faces_per_class"].items():
        sizes = ", ".join(f"{k} {v:,}" for k, v in report["faces_per_class_and_width"][c].items())
        lines.append(f"  {c:<24} {n:>6,}   by width: {sizes}")
    lines.append(f"  boxes over the picture's edge (cut to it): {report['boxes_clipped']}; "
                 f"left out (no class, no area or no coordinates): {report['boxes_dropped']}")
    lines.append(f"  exact copies: {report['redundant_copies']} redundant (each in one split "
                 f"with its original)")
    for key, what in (("without_picture", "VOC files whose picture is missing"),
                      ("without_boxes", "files in images/ with no VOC file (not used)"),
                      ("unreadable", "unreadable")):
        if report[key]:
            lines.append(f"  {what}: {len(report[key])} (first: {report[key][0]})")
    return "\n".join(lines)
