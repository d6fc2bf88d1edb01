"""Pascal VOC box files (``annotations/<name>.xml`` beside ``images/<name>.jpg``) and the
by-picture split of a box dataset.

The scenes dataset is split by picture, never by face: all faces of one street picture go to one
split, chosen from the sha256 of the picture's bytes, so exact copies land together, the split
does not depend on file names or listing order, and a picture keeps its split when others are
added. 70% train, 15% validation, 15% test.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from maskcore.errors import DatasetError

__all__ = ["BoxFile", "VocBox", "read_voc", "scan_voc", "split_of_digest"]

#: Shares of the by-picture split, in percent of the hash space: train, then validation, then test.
SPLIT_PERCENT = (("train", 70), ("val", 15), ("test", 15))


@dataclass(frozen=True)
class VocBox:
    """One labelled face: its class name and (x0, y0, x1, y1) in the picture's pixels."""

    label: str
    xyxy: tuple[float, float, float, float]

    @property
    def width(self) -> float:
        return self.xyxy[2] - self.xyxy[0]


@dataclass(frozen=True)
class BoxFile:
    """The boxes of one picture, as its VOC file gives them."""

    name: str  # the picture's file name, as in <filename>, else the XML's stem + .jpg
    width: int
    height: int
    boxes: tuple[VocBox, ...]
    clipped: int = 0  # boxes that ran over the picture's edge, kept cut to it
    dropped: int = 0  # boxes left out: no class, no area after clipping, or no coordinates


def read_voc(path: str | Path) -> BoxFile:
    """Parse one VOC file; boxes with no area are dropped, boxes over the edge are clipped.

    Raises:
        DatasetError: not a VOC annotation.
    """
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"{p}: not a readable VOC file ({exc})") from exc
    name = (root.findtext("filename") or "").strip() or p.stem + ".jpg"
    try:
        width = int(float(root.findtext("size/width") or 0))
        height = int(float(root.findtext("size/height") or 0))
    except (ValueError, OverflowError) as exc:
        raise DatasetError(f"{p}: the picture's size is not a number ({exc})") from exc
    boxes = []
    clipped = dropped = 0
    for obj in root.iter("object"):
        label = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not label or bb is None:
            dropped += 1
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax",
                                                                        "ymax"))
        except ValueError:
            dropped += 1
            continue
        given = (x0, y0, x1, y1)
        if width and height:
            x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
            y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
        if not (x1 > x0 and y1 > y0):  # degenerate (or NaN): nothing to learn or match
            dropped += 1
            continue
        clipped += given != (x0, y0, x1, y1)
        boxes.append(VocBox(label, (x0, y0, x1, y1)))
    return BoxFile(name=name, width=width, height=height, boxes=tuple(boxes),
                   clipped=clipped, dropped=dropped)


def scan_voc(annotations: str | Path) -> dict[str, BoxFile]:
    """Every ``*.xml`` in a folder, keyed by the picture's file name."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise DatasetError(f"no annotations folder: {folder}")
    out = {}
    for xml in sorted(folder.glob("*.xml")):
        bf = read_voc(xml)
        out[bf.name] = bf
    return out


def split_of_digest(sha256_hex: str) -> str:
    """``train``, ``val`` or ``test`` for a picture, from the sha256 of its bytes."""
    bucket = int(sha256_hex[:8], 16) % 100
    upto = 0
    for name, share in SPLIT_PERCENT:
        upto += share
        if bucket < upto:
            return name
    raise AssertionError("SPLIT_PERCENT must add up to 100")

