"""The Keras CNN, its augmentation and its training loop. Training side only: imports TensorFlow.

The design follows the seeds' (convolution blocks for features, pooling to downsample, a dense head
to classify) made cheap and steady: a stride-2 stem, five conv-BN-ReLU blocks widening from 32 to 256
while max-pooling halves the side, global average pooling instead of a large flatten, dropout, and a
softmax over any number of classes. At 128x128 it costs about 0.17 GFLOPs a picture (see
:func:`count_flops`), so on a CPU inference is no dearer than decoding the JPEG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter out of job logs

import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402

__all__ = ["TrainConfig", "build_model", "count_flops", "fit", "predict", "save_for_inference",
           "setup_tensorflow"]


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
    augment: bool = True
    seed: int = 0


def setup_tensorflow(seed: int) -> list[str]:
    """Seed Python, NumPy and TF; let GPU memory grow. Returns the GPUs TensorFlow sees."""
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Without this TF takes the whole card up front, starving anything else on it.
        tf.config.experimental.set_memory_growth(gpu, True)
    return [g.name for g in gpus]


def build_model(n_classes: int, size: tuple[int, int], cfg: TrainConfig) -> keras.Model:
    """The CNN: input ``image`` (N, H, W, 3) float32 in [0, 1] -> ``probabilities`` (N, classes)."""
    if n_classes < 2:
        raise ValueError("a classifier needs at least 2 classes")
    h, w = size

    def block(x: Any, filters: int, stride: int = 1) -> Any:
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        return keras.layers.ReLU()(x)

    inputs = keras.Input(shape=(h, w, 3), name="image")
    x = block(inputs, 16, stride=2)
    for i, filters in enumerate(cfg.widths):
        x = block(x, filters)
        if i < len(cfg.widths) - 1:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(cfg.dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="maskcore_cnn")


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


def _augmenter(seed: int) -> keras.Sequential:
    """Training-only augmentation: flip, small rotation and zoom, brightness and contrast."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed + 3),
            keras.layers.RandomContrast(0.15, seed=seed + 4),
        ],
        name="augment",
    )


def fit(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    class_weight: dict[int, float] | None = None,
) -> dict[str, list[float]]:
    """Train with early stopping on validation loss, keeping the best weights; returns the history.

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
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = train.shuffle(len(x_train), seed=cfg.seed, reshuffle_each_iteration=True)
    train = train.batch(cfg.batch_size)
    if cfg.augment:
        aug = _augmenter(cfg.seed)
        train = train.map(
            lambda x, y: (tf.clip_by_value(aug(x, training=True), 0.0, 1.0), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if cfg.mixup > 0:
        mix = keras.layers.MixUp(alpha=cfg.mixup, seed=cfg.seed + 5)

        def mixed(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            out = mix({"images": x, "labels": y}, training=True)
            return out["images"], out["labels"]

        train = train.map(mixed, num_parallel_calls=tf.data.AUTOTUNE)
    train = train.prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(128)
    # With EMA, its weights are swapped in for each validation and for the callbacks after it,
    # so early stopping judges and keeps the averaged weights.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema > 0 else []
    callbacks += [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True, verbose=1
        ),
    ]
    hist = model.fit(
        train, validation_data=val, epochs=cfg.epochs, callbacks=callbacks,
        class_weight=class_weight, verbose=2,
    )
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
