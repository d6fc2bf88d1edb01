"""The one preprocessing path, from encoded bytes to model input, shared by training and serving.

Training (``maskcore.training``) and every inference job call :func:`preprocess` / :func:`load`; nothing
else in the project decodes a picture for the model. Its constants live in :class:`PreprocessSpec`,
which the model card records, so inference rebuilds the spec from the card instead of repeating them.

The steps, in order (``PREPROCESS_VERSION`` names exactly this sequence; change it when a step
changes, since a model trained on one version must not be served with another):

1. Identify the format by content (Pillow's magic-number sniffing over :data:`ALLOWED_FORMATS`),
   never by file name.
2. Refuse pictures over ``max_pixels`` from the header alone, before any pixel is decoded.
3. For JPEG, let the decoder shrink by 1/2, 1/4 or 1/8 while staying at least the target size
   (``Image.draft``): far less work on large photos, and identical for training and serving.
4. Take the first frame of animated pictures; apply the EXIF orientation tag.
5. Convert to 8-bit RGB; alpha (and palette or tRNS transparency) is flattened onto ``background``.
   16-bit and 32-bit integer greys are scaled from 0..65535, float greys from 0..1 (see
   :func:`_to_rgb`).
6. Resize to ``size`` (height, width), stretching without crop, with ``resample``.
7. Scale to float32 in [0, 1].
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Register exactly the plugins of ALLOWED_FORMATS (Pillow loads most plugins lazily, and
# Image.open(formats=...) fails with a KeyError for one not yet loaded).
from PIL import (  # noqa: F401  (imported for their registration side effect)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from maskcore.errors import ImageDecodeError

__all__ = [
    "ALLOWED_FORMATS",
    "CROP_MARGIN",
    "PREPROCESS_VERSION",
    "Decoded",
    "Picture",
    "PreprocessSpec",
    "crop_face",
    "decode",
    "face_region",
    "load",
    "preprocess",
    "preprocess_batch",
    "to_input",
]

#: Bumped whenever any step above changes the numbers it produces.
PREPROCESS_VERSION = "mc-pre-1"

#: The margin cut around a face box, a share of its size on each side: what training cuts box
#: datasets with and what serving cuts detected faces with (a model's card records the margin it
#: was trained with, and serving then takes the card's).
CROP_MARGIN = 0.2

#: Formats we decode. Pillow can open more (EPS would start Ghostscript, for one); these are the
#: raster formats cameras, phones and the web produce. SVG and HEIC are not among them on purpose.
#: Multi-picture camera JPEGs (MPO) open through the JPEG entry and come back with format "MPO".
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

# EXIF orientations 5-8 turn the picture a quarter, so width and height trade places.
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that decides the numbers the model sees. Recorded in the model card."""

    size: tuple[int, int] = (128, 128)  # (height, width) of the model input
    resample: str = "bilinear"  # Pillow's filter; its bilinear antialiases when shrinking
    background: tuple[int, int, int] = (255, 255, 255)  # where alpha is flattened onto
    scale: float = 1.0 / 255.0  # uint8 -> [0, 1]
    max_pixels: int = 64_000_000  # refused above this, read from the header
    version: str = field(default=PREPROCESS_VERSION)

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, not {self.resample!r}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (height, width) of at least 8 px, not {self.size!r}")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (for the model card and manifests)."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Rebuild a spec from :meth:`to_dict` output; refuses a version this code does not run."""
        version = d.get("version")
        if version != PREPROCESS_VERSION:
            raise ValueError(
                f"preprocessing version {version!r} is not implemented here "
                f"(this code runs {PREPROCESS_VERSION!r})"
            )
        return cls(
            size=(int(d["size"][0]), int(d["size"][1])),
            resample=str(d["resample"]),
            background=tuple(int(c) for c in d["background"]),  # type: ignore[arg-type]
            scale=float(d["scale"]),
            max_pixels=int(d.get("max_pixels", cls.max_pixels)),
            version=version,
        )


@dataclass(frozen=True)
class Decoded:
    """One preprocessed picture and what was learned about it on the way."""

    array: np.ndarray  # float32, (H, W, 3), in [0, 1]
    width: int  # original width, after EXIF orientation
    height: int  # original height, after EXIF orientation
    format: str  # as identified from the content, e.g. "JPEG"
    mode: str  # Pillow mode before conversion, e.g. "P", "RGBA"


DEFAULT_SPEC = PreprocessSpec()


def load(data: bytes, spec: PreprocessSpec = DEFAULT_SPEC) -> Decoded:
    """Decode encoded picture bytes into model input, with the original size and format.

    Args:
        data: the file's bytes, any allowed format (identified by content).
        spec: the preprocessing constants; take them from the model card when serving.

    Returns:
        A :class:`Decoded` whose ``array`` is float32 (H, W, 3) in [0, 1].

    Raises:
        ImageDecodeError: for anything that is not a decodable picture within the pixel limit.
    """
    pic = decode(data, spec, draft=max(spec.size))
    return Decoded(array=to_input(pic.image, spec), width=pic.width, height=pic.height,
                   format=pic.format, mode=pic.mode)


@dataclass(frozen=True)
class Picture:
    """A decoded picture, upright and RGB (steps 1-5), before any resizing for a model.

    ``image`` may be smaller than the original when the JPEG decoder shrank it (``draft``);
    ``width`` and ``height`` are always the original's, after EXIF orientation, and
    :meth:`to_original` maps the image's pixel coordinates back to them.
    """

    image: Image.Image  # 8-bit RGB, upright
    width: int  # original width, after EXIF orientation
    height: int  # original height, after EXIF orientation
    format: str
    mode: str

    @property
    def factor(self) -> float:
        """Original pixels per pixel of ``image`` (1.0 unless the decoder shrank it)."""
        return self.width / self.image.width

    def pixels(self) -> np.ndarray:
        """``image`` as uint8 (H, W, 3)."""
        return np.asarray(self.image, dtype=np.uint8)


def decode(data: bytes, spec: PreprocessSpec = DEFAULT_SPEC, *, draft: int | None = None
           ) -> Picture:
    """Steps 1-5: bytes -> upright 8-bit RGB, refusing what is not a picture within the limit.

    Args:
        data: the file's bytes.
        spec: supplies ``max_pixels`` and ``background``.
        draft: for JPEG, let the decoder shrink while both sides stay at least this many pixels
            (None decodes at full size).

    Raises:
        ImageDecodeError: for anything that is not a decodable picture within the pixel limit.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        # Pillow's own bomb check only warns below twice its limit; ours below is the one that
        # counts, so silence its warning rather than let it leak into a user's log.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Raised by the very convert("RGBA") it recommends (see _to_rgb).
            warnings.filterwarnings("ignore", message="Palette images with Transparency")
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = im.size
            if width < 1 or height < 1:
                raise ImageDecodeError(f"picture has no pixels ({width}x{height})")
            if width * height > spec.max_pixels:
                raise ImageDecodeError(
                    f"picture is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
                    f"limit of {spec.max_pixels / 1e6:g} megapixels", kind="too_large"
                )
            fmt, mode = im.format or "?", im.mode
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in _QUARTER_TURNS:
                width, height = height, width
            if draft is not None and fmt in ("JPEG", "MPO"):
                # Keep at least the target on both sides whatever the orientation turns out to be.
                im.draft("RGB", (draft, draft))
            # In place: the copy exif_transpose otherwise returns, even of an upright picture,
            # was a tenth of the decode time of a large one; _to_rgb makes the new image anyway.
            ImageOps.exif_transpose(im, in_place=True)
            rgb = _to_rgb(im, spec.background)
            rgb.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses by itself above twice its MAX_IMAGE_PIXELS (about 179 MP), before we see
        # the size; that caps max_pixels in effect. Its message names its own limit, which is not
        # the one a user can set, so only the picture's size is taken from it.
        size = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(size.group(1)) / 1e6:.1f} megapixels" if size else "too many pixels"
        raise ImageDecodeError(
            f"picture is {what}, over the limit of {spec.max_pixels / 1e6:g} megapixels",
            kind="too_large") from exc
    except Exception as exc:  # Pillow's plugins raise many types; all mean "not a picture for us".
        raise ImageDecodeError(_describe(exc)) from exc
    return Picture(image=rgb, width=width, height=height, format=fmt, mode=mode)


def to_input(image: Image.Image, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Steps 6-7: an RGB picture (or a face cut from one) -> float32 (H, W, 3) in [0, 1]."""
    out_h, out_w = spec.size
    if image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), _RESAMPLE[spec.resample])
    pixels = np.asarray(image, dtype=np.uint8)
    out: np.ndarray = pixels.astype(np.float32) * np.float32(spec.scale)
    return out


def face_region(box: Sequence[float], width: int, height: int, margin: float
                ) -> tuple[int, int, int, int]:
    """The region cut for a face box: grown by ``margin`` of its size on every side, made square
    around its centre (faces are about square; a square crop keeps the aspect the classifier
    saw), then clipped to the picture. Integer pixels ``(x0, y0, x1, y1)``, never empty.

    Training (box datasets) and serving (detected boxes) both cut faces with this function.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin)
    left, top = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    right, bottom = int(np.ceil(cx + side / 2)), int(np.ceil(cy + side / 2))
    left, top = min(max(left, 0), width - 1), min(max(top, 0), height - 1)
    right, bottom = max(min(right, width), left + 1), max(min(bottom, height), top + 1)
    return left, top, right, bottom


def crop_face(picture: Picture, box: Sequence[float], spec: PreprocessSpec = DEFAULT_SPEC,
              margin: float = CROP_MARGIN) -> np.ndarray:
    """Model input for one face: ``box`` in the original picture's pixels (after EXIF
    orientation) is grown by ``margin``, cut from the decoded picture and put through steps 6-7.
    """
    f = picture.factor
    x0, y0, x1, y1 = face_region([v / f for v in box], picture.image.width,
                                 picture.image.height, margin)
    return to_input(picture.image.crop((x0, y0, x1, y1)), spec)


def preprocess(data: bytes, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Encoded bytes -> float32 (H, W, 3) in [0, 1]. See :func:`load` for errors."""
    return load(data, spec).array


def preprocess_batch(items: Sequence[bytes], spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Many encoded pictures -> float32 (N, H, W, 3); raises on the first undecodable one.

    Jobs that must survive bad pictures call :func:`load` per item and keep the failures as rows.
    """
    h, w = spec.size
    out = np.empty((len(items), h, w, 3), dtype=np.float32)
    for i, data in enumerate(items):
        out[i] = preprocess(data, spec)
    return out


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, flattening alpha and transparency onto ``background``."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        im = _high_depth_to_l(im)
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float greys -> 8-bit grey by a fixed rule, not Pillow's clipping.

    Pillow's own ``convert("L")`` clips 16-bit values at 255, which turns most 16-bit pictures white.
    Integers are taken as 0..65535 (PNG and TIFF store 16-bit greys in these modes); floats as 0..1.
    """
    a = np.asarray(im)
    if im.mode == "F":
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0
    else:
        a = np.clip(a.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(a).astype(np.uint8), mode="L")


def _describe(exc: Exception) -> str:
    """A one-line, user-readable reason for a decode failure."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ == "UnidentifiedImageError":
        allowed = ", ".join(ALLOWED_FORMATS)
        return f"not a picture in a supported format ({allowed})"
    if "truncated" in text.lower():
        return f"truncated or corrupt picture: {text}"
    return f"cannot decode picture: {text}"
