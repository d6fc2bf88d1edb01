"""The Keras CNN, its augmentation and its training loop. Training side only: imports TensorFlow.

The design follows the seeds' (convolution blocks for features, pooling to downsample, a dense head
to classify) made cheap and steady: a stride-2 stem, five conv-BN-ReLU blocks widening from 32 to 256
while max-pooling halves the side, global average pooling instead of a large flatten, dropout, and a
softmax over any number of classes. At 128x128 it costs about 0.17 GFLOPs a picture (see
:func:`count_flops`), so on a CPU inference is no dearer than decoding the JPEG.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter out of job logs

import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402

from maskcore import provenance  # noqa: E402
from maskcore.card import INPUT_NAME, OUTPUT_NAME  # noqa: E402

__all__ = ["TrainConfig", "augment_batch", "build_model", "count_flops", "fit", "float32_copy",
           "predict", "reseed", "resolve_compute", "save_for_inference", "setup_tensorflow"]

#: Keras dtype policy for each ``TrainConfig.compute`` choice.
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs with the defaults the bundled model was trained with."""

    epochs: int = 40  # the cosine schedule spans these; early stopping may end sooner
    batch_size: int = 32
    learning_rate: float = 2e-3  # AdamW peak, reached after warm-up, then cosine decay to 0
    warmup_epochs: int = 2
    weight_decay: float = 0.01  # AdamW's decoupled decay (scaled by the learning rate)
    # Epochs without a better validation loss before stopping. As long as the schedule: the
    # low-rate tail of the cosine is where it generalises best; the best epoch's weights are
    # restored either way.
    patience: int = 40
    # Conv block widths after the 16-wide stem; each block but the last halves the side.
    widths: tuple[int, ...] = (32, 64, 128, 256, 256)
    dropout: float = 0.3
    label_smoothing: float = 0.0  # softened one-hot targets (0: plain cross-entropy)
    # Momentum of an exponential moving average of the weights, used for validation, early
    # stopping and the final model (0: off). 0.998 averages over about 500 steps (6 epochs).
    ema: float = 0.0
    # MixUp's alpha: training batches become blends of two pictures with blended targets
    # (0: off). 0.2 mixes most pairs only a little.
    mixup: float = 0.0
    # Share of the training pictures of each batch shown at a low resolution: shrunk to a side
    # drawn between LOW_RES_SIDES (one draw a batch) and resized back (0: off). Close-ups then
    # also look like street faces, most of which are under 32 px wide.
    low_res: float = 0.0
    # Largest turn of each training picture's hue, a share of the colour circle (0: off). Masks
    # come in every colour, skin-coloured ones included, so colour alone should not decide.
    hue: float = 0.0
    augment: bool = True
    # Arithmetic of the training steps: "fp32", "bf16" (bfloat16 matmuls and convolutions, float32
    # weights), or "auto" (bf16 where the CPU has bfloat16 instructions; see resolve_compute).
    # The exported model is float32 either way.
    compute: str = "auto"
    seed: int = 0


def reseed(seed: int) -> None:
    """Seed Python, NumPy and TF: a model built next gets the same initial weights as the
    first one built after :func:`setup_tensorflow` with this seed."""
    keras.utils.set_random_seed(seed)


def setup_tensorflow(seed: int) -> list[str]:
    """Seed Python, NumPy and TF; let GPU memory grow. Returns the GPUs TensorFlow sees.

    Once per process: TensorFlow refuses to change a GPU's settings after it has used it.
    """
    reseed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Without this TF takes the whole card up front, starving anything else on it.
        tf.config.experimental.set_memory_growth(gpu, True)
    return [g.name for g in gpus]


def _cpu_has_bf16() -> bool:
    """Whether this (Linux) CPU has bfloat16 dot-product instructions (AVX512_BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & provenance.cpu_flags())


def resolve_compute(choice: str, gpus: list[str]) -> str:
    """Settle ``TrainConfig.compute``: "auto" becomes "bf16" on a CPU with bfloat16 instructions.

    There bfloat16 steps run about twice as fast as float32 ones (oneDNN), which buys epochs
    within the training-time budget. Elsewhere, GPUs included, "auto" keeps float32: without those
    instructions bfloat16 is emulated and slower, and not every GPU has it.
    """
    if choice not in ("auto", *POLICIES):
        raise ValueError(f"compute must be auto, fp32 or bf16, not {choice!r}")
    if choice != "auto":
        return choice
    return "bf16" if not gpus and _cpu_has_bf16() else "fp32"


def build_model(n_classes: int, size: tuple[int, int], cfg: TrainConfig) -> keras.Model:
    """The CNN: input ``image`` (N, H, W, 3) float32 in [0, 1] -> ``probabilities`` (N, classes).

    ``cfg.compute`` ("fp32" or "bf16", as :func:`resolve_compute` settles it) sets the layers'
    arithmetic; weights, input and output are float32 either way, so :func:`float32_copy` can
    carry the weights over unchanged.
    """
    if n_classes < 2:
        raise ValueError("a classifier needs at least 2 classes")
    h, w = size
    if cfg.compute not in POLICIES:
        raise ValueError(f"settle compute={cfg.compute!r} with resolve_compute() first")
    policy = keras.DTypePolicy(POLICIES[cfg.compute])

    def block(x: Any, filters: int, stride: int = 1) -> Any:
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                                dtype=policy)(x)
        x = keras.layers.BatchNormalization(dtype=policy)(x)
        return keras.layers.ReLU(dtype=policy)(x)

    inputs = keras.Input(shape=(h, w, 3), name=INPUT_NAME)
    x = block(inputs, 16, stride=2)
    for i, filters in enumerate(cfg.widths):
        x = block(x, filters)
        if i < len(cfg.widths) - 1:
            x = keras.layers.MaxPooling2D(dtype=policy)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=policy)(x)
    x = keras.layers.Dropout(cfg.dropout, dtype=policy)(x)
    # The softmax stays float32: bfloat16's 8-bit mantissa would round the probabilities.
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME,
                                 dtype="float32")(x)
    return keras.Model(inputs, outputs, name="maskcore_cnn")


def float32_copy(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    """The same network and weights with float32 arithmetic throughout: what is evaluated,
    exported and checked for parity after a bf16 training."""
    n_classes = int(model.output.shape[-1])
    size = (int(model.input.shape[1]), int(model.input.shape[2]))
    clone = build_model(n_classes, size, replace(cfg, compute="fp32"))
    clone.set_weights(model.get_weights())
    return clone


def count_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolution and dense layers for one picture (the bulk of the cost)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, oh, ow, oc = layer.output.shape
            kh, kw = layer.kernel_size
            ic = layer.input.shape[-1]
            total += 2 * oh * ow * oc * kh * kw * ic
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


#: The sides (px, lowest and highest) a low-resolution training picture is shrunk to.
LOW_RES_SIDES = (12, 48)


def augment_batch(x: tf.Tensor, seed: tf.Tensor, low_res: float = 0.0,
                  hue: float = 0.0) -> tf.Tensor:
    """Training-only augmentation of a batch (N, H, W, 3) in [0, 1], drawn from ``seed`` (2 ints).

    Horizontal flip, rotation up to 18 degrees and zoom up to 10% are one affine resampling
    (bilinear, edges repeated), then brightness up to 10% and contrast up to 15%; with
    ``low_res`` > 0, that share of the pictures is then shrunk and resized back (see
    ``TrainConfig.low_res``); with ``hue`` > 0 each picture's hue is turned by up to that share
    of the colour circle (``TrainConfig.hue``). Keras' five
    separate layers did the same with three resamplings and took about as much CPU as the
    training step itself on 2 cores; stateless draws make each batch's changes a function of
    (seed, step), so a run repeats.
    """
    n = tf.shape(x)[0]
    height = tf.cast(tf.shape(x)[1], tf.float32)
    width = tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def draw(k: int, low: float, high: float, shape: Any = None) -> tf.Tensor:
        return tf.random.stateless_uniform(shape if shape is not None else [n], seeds[k], low, high)

    angle = draw(0, -0.1 * math.pi, 0.1 * math.pi)
    scale = draw(1, 0.9, 1.1)  # > 1 samples a larger area: zooms out
    flip = tf.where(draw(2, 0.0, 1.0) < 0.5, -1.0, 1.0)
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # Each output pixel (u, v) reads the input at (a0 u + a1 v + a2, b0 u + b1 v + b2): a
    # rotation and scale about the centre, mirrored in u when flipped.
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    a2, b2 = cx - a0 * cx - a1 * cy, cy - b0 * cx - b1 * cy
    zeros = tf.zeros([n])
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1),
        output_shape=tf.shape(x)[1:3], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    brightness = draw(3, -0.1, 0.1, [n, 1, 1, 1])
    contrast = draw(4, 0.85, 1.15, [n, 1, 1, 1])
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = (x - mean) * contrast + mean + brightness
    x = tf.clip_by_value(x, 0.0, 1.0)
    if low_res > 0:
        # Its own seeds, derived from the last, so the draws above stay as they were without it.
        more = tf.random.experimental.stateless_split(seeds[4], 2)
        side = tf.random.stateless_uniform([], more[0], LOW_RES_SIDES[0], LOW_RES_SIDES[1] + 1,
                                           dtype=tf.int32)
        small = tf.image.resize(x, tf.stack([side, side]), method="bilinear", antialias=True)
        blurred = tf.image.resize(small, tf.shape(x)[1:3], method="bilinear")
        chosen = tf.random.stateless_uniform([n, 1, 1, 1], more[1]) < low_res
        # Antialiased resizing overshoots [0, 1] by a rounding error or so.
        x = tf.where(chosen, tf.clip_by_value(blurred, 0.0, 1.0), x)
    if hue > 0:
        # Seeds of its own, as for low_res, so the draws above do not move.
        turn = tf.random.stateless_uniform([n, 1, 1], tf.random.experimental.stateless_split(
            seeds[3], 2)[1], -hue, hue)
        hsv = tf.image.rgb_to_hsv(x)
        h = tf.math.floormod(hsv[..., 0] + turn, 1.0)
        x = tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], -1)),
                             0.0, 1.0)
    return x


def fit(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    sample_weight: np.ndarray | None = None,
    stop_after: int | None = None,
) -> dict[str, list[float]]:
    """Train with early stopping on validation loss, keeping the best weights; returns the history.

    ``sample_weight`` (one per training sample) scales each sample's loss: how classes are
    balanced (:func:`maskcore.training.balancing_weights`).

    ``stop_after`` runs exactly that many epochs of the ``cfg.epochs`` schedule and keeps the
    last weights, with no early stopping (a refit at an epoch the validation loss chose; the
    validation arrays, which may be empty, are then only logged).

    The arrays are the cached output of the shared preprocessing, so no picture is decoded again;
    augmentation runs on training batches only, inside the tf.data pipeline.
    """
    steps = -(-len(x_train) // cfg.batch_size)
    warmup = min(cfg.warmup_epochs * steps, max(cfg.epochs * steps - 1, 0))
    # Warm up, then decay along a cosine: steadier than halving on plateaus, which had the
    # first model's rate collapse by epoch 20 while it was still improving.
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / 20,
        decay_steps=max(cfg.epochs * steps - warmup, 1),
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
    )
    n_classes = int(model.output.shape[-1])
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay,
                                         use_ema=cfg.ema > 0, ema_momentum=cfg.ema or 0.99),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    # One-hot targets: label smoothing needs them (the sparse loss has no smoothing).
    y_train = keras.utils.to_categorical(y_train, n_classes)
    y_val = keras.utils.to_categorical(y_val, n_classes)
    # One stream over all epochs (reshuffled for each), so the step count seeds augmentation.
    weights = np.ones(len(x_train), np.float32) if sample_weight is None else sample_weight
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train, weights))
    train = train.shuffle(len(x_train), seed=cfg.seed, reshuffle_each_iteration=True)
    train = train.batch(cfg.batch_size).repeat()
    if cfg.augment:
        base = tf.constant(cfg.seed, tf.int64)
        train = train.enumerate().map(
            lambda step, xyw: (augment_batch(xyw[0], tf.stack([base, step]), cfg.low_res, cfg.hue),
                               *xyw[1:]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if cfg.mixup > 0:
        mix = keras.layers.MixUp(alpha=cfg.mixup, seed=cfg.seed + 5)

        def mixed(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            # A blend keeps its first picture's weight.
            out = mix({"images": x, "labels": y}, training=True)
            return out["images"], out["labels"], w

        train = train.map(mixed, num_parallel_calls=tf.data.AUTOTUNE)
    train = train.prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(128) if len(x_val) else None
    # With EMA, its weights are swapped in for each validation and for the callbacks after it,
    # so early stopping judges and keeps the averaged weights.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema > 0 else []
    if stop_after is None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True, verbose=1))
    elif not 1 <= stop_after <= cfg.epochs:
        raise ValueError(f"stop_after must be within the schedule's 1-{cfg.epochs} epochs")
    hist = model.fit(
        train, validation_data=val, epochs=stop_after or cfg.epochs, steps_per_epoch=steps,
        callbacks=callbacks, verbose=2,
    )
    if stop_after is not None and cfg.ema > 0:  # keep the averaged weights, as early stopping does
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def save_for_inference(model: keras.Model, path: Any) -> None:
    """Save a ``.keras`` file whose zip is deflated.

    Keras stores the archive uncompressed, and its HDF5 weights file has about three times the
    weights' size in padding (11.9 MB for this model's 3.9 MB); deflated it is 3.7 MB and loads
    exactly the same.
    """
    import zipfile
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(path.stem + ".stored.keras")
    model.save(tmp)
    deflated = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9)
    with zipfile.ZipFile(tmp) as src, deflated as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    tmp.unlink()


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Class probabilities for preprocessed pictures."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
