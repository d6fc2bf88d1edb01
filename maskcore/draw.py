"""Pictures with their faces drawn: the class colours, boxes and labels, thumbnails and crops.

The report's thumbnails and ``--annotate``'s full-size copies are drawn here, on the source
picture as the shared :func:`maskcore.preprocess.decode` gives it (EXIF orientation applied, so
the boxes, which are in the upright picture's pixels, land on the faces).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from maskcore.preprocess import Picture, face_region

__all__ = ["CLASS_COLOURS", "LABEL_TEXT", "colour_of", "draw_faces", "encode_jpeg", "face_crop"]

#: One colour per label, everywhere a label is drawn or shown (the report's CSS reads these too).
CLASS_COLOURS = {
    "with_mask": "#1a9850",
    "without_mask": "#d73027",
    "mask_weared_incorrect": "#f28e1c",
    "uncertain": "#7b6fb0",
}
OTHER_COLOUR = "#5f6b7a"

#: Words a person reads for a label (the rows keep the class names).
LABEL_TEXT = {"with_mask": "mask", "without_mask": "no mask",
              "mask_weared_incorrect": "mask worn wrongly", "uncertain": "uncertain"}


def colour_of(label: str) -> str:
    """The colour a label is drawn in."""
    return CLASS_COLOURS.get(label, OTHER_COLOUR)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


#: A face drawn narrower than this (pixels) gets its box but no text: in a thumbnail of a crowd
#: the labels would cover the faces; the colour still says the class.
MIN_LABELLED = 40


def draw_faces(picture: Picture, faces: Iterable[dict[str, Any]], *,
               longest: int | None = None) -> Image.Image:
    """The picture (scaled so that its longest side is ``longest``, if given) with each face's
    box in its label's colour, and its label and score above it when the box is wide enough.

    ``faces`` are face rows: boxes in the original picture's pixels after EXIF orientation.
    """
    image = picture.image
    if longest is not None and max(image.size) != longest:
        # Small pictures are scaled up too, so every thumbnail's lines and labels are alike.
        k = longest / max(image.size)
        image = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))),
                             Image.Resampling.LANCZOS)
    else:
        image = image.copy()
    scale = image.width / picture.width  # original pixels -> drawn pixels
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 300))
    font = _font(max(11, round(max(image.size) / 45)))
    for f in faces:
        colour = colour_of(str(f["label"]))
        box = [f["x0"] * scale, f["y0"] * scale, f["x1"] * scale, f["y1"] * scale]
        draw.rectangle(box, outline=colour, width=line)
        if box[2] - box[0] < MIN_LABELLED:
            continue
        text = f"{LABEL_TEXT.get(f['label'], f['label'])} {float(f['score']):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        # Above the box when there is room, else inside its top edge.
        ty = box[1] - th - 2 * line if box[1] - th - 2 * line >= 0 else box[1] + line
        tx = min(max(box[0], 0), max(image.width - tw - 2 * line, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=colour)
        draw.text((tx + line - left, ty + line - top), text, fill="white", font=font)
    return image


def face_crop(picture: Picture, face: dict[str, Any], side: int, margin: float = 0.2
              ) -> Image.Image:
    """One face with ``margin`` of its size around it (the shared crop geometry), ``side``
    pixels square."""
    f = picture.factor
    box = [face["x0"] / f, face["y0"] / f, face["x1"] / f, face["y1"] / f]
    region = face_region(box, picture.image.width, picture.image.height, margin)
    return picture.image.crop(region).resize((side, side), Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int = 80) -> bytes:
    """JPEG bytes of an RGB image (from quality 90 on, colour at full resolution: the thin
    coloured lines of a box stay their colour)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True,
                              subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()
