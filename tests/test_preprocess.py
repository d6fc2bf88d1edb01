"""The shared preprocessing: modes, orientation, frames, content sniffing, and every refusal."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from maskcore import ImageDecodeError, PreprocessSpec, load, preprocess, preprocess_batch
from tests.helpers import BAD_INPUTS, encode, gif_with_size, gradient, png_with_size

SPEC = PreprocessSpec(size=(32, 40))


def _check(a: np.ndarray, h: int = 32, w: int = 40) -> None:
    assert a.dtype == np.float32
    assert a.shape == (h, w, 3)
    assert 0.0 <= a.min() and a.max() <= 1.0


@pytest.mark.parametrize(
    ("mode", "fill", "fmt", "expected"),
    [
        ("1", 1, "PNG", 1.0),
        ("L", 128, "PNG", 128 / 255),
        ("RGB", (10, 200, 30), "PNG", None),
        ("CMYK", (0, 0, 0, 0), "JPEG", 1.0),  # no ink is white
        ("I;16", 65535, "PNG", 1.0),  # 16-bit full scale is white, not clipped garbage
        ("I;16", 32896, "PNG", 128 / 255),  # 128 * 257
        ("I", 65535, "TIFF", 1.0),
        ("F", 0.5, "TIFF", 128 / 255),
    ],
)
def test_every_mode_becomes_rgb(mode, fill, fmt, expected):
    data = encode(Image.new(mode, (20, 10), fill), fmt)
    a = preprocess(data, SPEC)
    _check(a)
    if expected is not None:
        np.testing.assert_allclose(a, expected, atol=1.5 / 255)
    else:
        np.testing.assert_allclose(a[0, 0], np.array(fill) / 255, atol=1 / 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_flattened_onto_the_background(mode):
    im = Image.new(mode, (16, 16), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    a = preprocess(encode(im, "PNG"), SPEC)
    np.testing.assert_allclose(a, 1.0)  # fully transparent black over white is white
    red = PreprocessSpec(size=(32, 40), background=(255, 0, 0))
    b = preprocess(encode(im, "PNG"), red)
    np.testing.assert_allclose(b[..., 0], 1.0)
    np.testing.assert_allclose(b[..., 1:], 0.0)


def test_palette_with_transparency():
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))  # left half red, right half index 0 (transparent black)
    data = encode(im, "PNG", transparency=0)
    assert Image.open(__import__("io").BytesIO(data)).mode == "P"
    a = preprocess(data, PreprocessSpec(size=(16, 16), resample="nearest"))
    np.testing.assert_allclose(a[:, :8], np.broadcast_to([1.0, 0, 0], (16, 8, 3)))
    np.testing.assert_allclose(a[:, 8:], 1.0)


def test_output_size_and_range_default_spec():
    d = load(encode(gradient(300, 200), "JPEG", quality=90))
    assert d.array.shape == (128, 128, 3)
    assert (d.width, d.height, d.format) == (300, 200, "JPEG")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_gives_the_upright_picture(orientation):
    upright = gradient(64, 48)
    # Store the pixels turned the other way, with the tag that turns them back.
    stored = {3: upright.rotate(180), 6: upright.rotate(90, expand=True),
              8: upright.rotate(-90, expand=True)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encode(stored, "PNG", exif=exif.tobytes())
    a = load(tagged, SPEC)
    b = load(encode(upright, "PNG"), SPEC)
    assert (a.width, a.height) == (64, 48)
    assert np.abs(a.array - b.array).max() <= 1 / 255


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    a = preprocess(data, SPEC)
    assert a[..., 0].mean() > 0.95 and a[..., 2].mean() < 0.05


def test_content_decides_not_the_name(tmp_path):
    jpeg = encode(gradient(), "JPEG")
    (tmp_path / "looks.png").write_bytes(jpeg)
    assert load((tmp_path / "looks.png").read_bytes(), SPEC).format == "JPEG"
    (tmp_path / "notes.jpg").write_bytes(b"just text")
    with pytest.raises(ImageDecodeError, match="not a picture"):
        load((tmp_path / "notes.jpg").read_bytes(), SPEC)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_raise_the_package_error(name):
    with pytest.raises(ImageDecodeError) as info:
        preprocess(BAD_INPUTS[name], SPEC)
    assert str(info.value)  # a readable message, never empty


@pytest.mark.parametrize("make", [png_with_size, gif_with_size])
def test_pixel_limit_is_checked_before_decoding(make):
    with pytest.raises(ImageDecodeError, match="megapixels"):
        preprocess(make(20_000, 20_000), SPEC)
    small = PreprocessSpec(size=(32, 40), max_pixels=100)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        preprocess(encode(gradient(20, 20)), small)


def test_bomb_is_refused_without_allocating_it():
    """In a process whose address space cannot hold the picture, the refusal still comes cleanly."""
    script = textwrap.dedent(
        """
        import resource, sys
        from maskcore import preprocess, ImageDecodeError
        from tests.helpers import png_with_size
        data = png_with_size(30_000, 30_000)  # 900 MP: 2.7 GB as RGB
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, hard))
        try:
            preprocess(data)
        except ImageDecodeError as exc:
            print('refused:', exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout
    # The picture's own size and our limit, not Pillow's internal one (178,956,970 pixels).
    assert "900.0 megapixels, over the limit of 64 megapixels" in out.stdout
    assert "178956970" not in out.stdout


def test_batch_equals_singles_stacked():
    items = [encode(gradient(50 + 7 * i, 40 + 3 * i, seed=i), fmt)
             for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "BMP", "GIF"])]
    batch = preprocess_batch(items, SPEC)
    assert batch.shape == (5, 32, 40, 3)
    np.testing.assert_array_equal(batch, np.stack([preprocess(b, SPEC) for b in items]))


def test_spec_round_trips_and_refuses_other_versions():
    spec = PreprocessSpec(size=(64, 96), resample="bicubic", background=(1, 2, 3))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    d = spec.to_dict()
    d["version"] = "someone-elses-2"
    with pytest.raises(ValueError, match="not implemented"):
        PreprocessSpec.from_dict(d)
