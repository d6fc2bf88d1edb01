"""The CNN's building blocks: training augmentation, bf16 arithmetic and its float32 copy."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the training extra ([train]) is not installed")

from maskcore import cnn  # noqa: E402


def halves(n: int = 8, side: int = 32) -> np.ndarray:
    """Pictures whose left half is bright and right half dark, so a mirror image is obvious."""
    x = np.full((n, side, side, 3), 0.1, np.float32)
    x[:, :, : side // 2] = 0.9
    return x


def seed(a: int, b: int) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def test_augmentation_is_a_function_of_its_seed():
    x = tf.constant(halves())
    a = cnn.augment_batch(x, seed(0, 1)).numpy()
    assert np.array_equal(a, cnn.augment_batch(x, seed(0, 1)).numpy())
    assert not np.allclose(a, cnn.augment_batch(x, seed(0, 2)).numpy())
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_augmentation_mirrors_about_half_and_keeps_the_picture():
    x = halves(n=400)
    out = cnn.augment_batch(tf.constant(x), seed(3, 0)).numpy()
    left = out[:, :, :16].mean(axis=(1, 2, 3))
    right = out[:, :, 16:].mean(axis=(1, 2, 3))
    mirrored = right > left
    assert 0.4 < mirrored.mean() < 0.6
    # Rotation, zoom, brightness and contrast are small: each picture is still clearly its
    # original or its mirror image.
    assert np.all(np.abs(left - right) > 0.4)


def test_low_resolution_blurs_its_share_and_leaves_the_rest():
    side = 128
    stripes = np.zeros((200, side, side, 3), np.float32)
    stripes[:, :, ::2] = 1.0  # one-pixel stripes: the finest detail a picture can hold
    x = tf.constant(stripes)
    plain = cnn.augment_batch(x, seed(5, 0)).numpy()
    assert np.array_equal(plain, cnn.augment_batch(x, seed(5, 0), 0.0).numpy())
    mixed = cnn.augment_batch(x, seed(5, 0), 0.5).numpy()
    changed = np.array([not np.array_equal(a, b) for a, b in zip(plain, mixed, strict=True)])
    assert 0.35 < changed.mean() < 0.65
    # Detail left: the mean step between horizontal neighbours. At 48 px or fewer the stripes
    # cannot survive the round trip.
    detail = np.abs(np.diff(mixed, axis=2)).mean(axis=(1, 2, 3))
    assert detail[changed].max() < 0.5 * detail[~changed].min()
    assert mixed.min() >= 0.0 and mixed.max() <= 1.0


def test_hue_turns_colours_within_its_range_and_nothing_else():
    rng = np.random.default_rng(0)
    x = tf.constant(np.broadcast_to(rng.uniform(0.2, 0.9, (64, 1, 1, 3)),
                                    (64, 16, 16, 3)).astype(np.float32))
    plain = tf.image.rgb_to_hsv(cnn.augment_batch(x, seed(7, 0))).numpy()
    turned = tf.image.rgb_to_hsv(cnn.augment_batch(x, seed(7, 0), 0.0, 0.1)).numpy()
    # Saturation and value, and so every other draw (flip, zoom, brightness), are unchanged.
    assert np.allclose(plain[..., 1:], turned[..., 1:], atol=1e-4)
    turn = (turned[..., 0] - plain[..., 0] + 0.5) % 1.0 - 0.5  # signed, around the circle
    per_picture = turn.mean(axis=(1, 2))
    assert np.abs(per_picture).max() <= 0.1 + 1e-4
    assert np.abs(per_picture).mean() > 0.03  # turned, not left alone
    assert (per_picture > 0).any() and (per_picture < 0).any()


def test_compute_choice():
    assert cnn.resolve_compute("fp32", []) == "fp32"
    assert cnn.resolve_compute("bf16", []) == "bf16"
    assert cnn.resolve_compute("auto", ["/physical_device:GPU:0"]) == "fp32"
    assert cnn.resolve_compute("auto", []) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        cnn.resolve_compute("fp16", [])


def test_bf16_model_has_a_float32_copy_with_the_same_weights():
    cfg = cnn.TrainConfig(widths=(8, 16), compute="bf16")
    model = cnn.build_model(3, (32, 32), cfg)
    assert model.layers[1].compute_dtype == "bfloat16"
    assert all(w.dtype == np.float32 for w in model.get_weights())
    copy = cnn.float32_copy(model, cfg)
    assert all(layer.compute_dtype == "float32" for layer in copy.layers)
    for a, b in zip(model.get_weights(), copy.get_weights(), strict=True):
        assert np.array_equal(a, b)
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    p16, p32 = cnn.predict(model, x), cnn.predict(copy, x)
    assert p16.dtype == p32.dtype == np.float32
    assert np.allclose(p32.sum(axis=1), 1, atol=1e-6)
    # Only rounding separates them: bfloat16 keeps 8 bits of mantissa.
    assert np.abs(p16 - p32).max() < 0.05
