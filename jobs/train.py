"""``maskcore train DATA_DIR... --out DIR``: the training job's command line.

The job itself is :func:`maskcore.training.run_training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from maskcore.cli import run_command
from maskcore.preprocess import CROP_MARGIN
from maskcore.training import TRAINING, run_training

__all__ = ["train"]


def _widths(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError as exc:
        raise click.BadParameter("comma-separated whole numbers, such as 32,64,128") from exc
    if not widths or min(widths) < 1:
        raise click.BadParameter("at least one width, each positive")
    return widths


SHORT_HELP = "Train, evaluate and export a model to ONNX with its card."


@click.command(short_help=SHORT_HELP)
@click.argument("data_dirs", nargs=-1, required=True,
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for model.onnx, model.json, model.keras, report.json and plots.")
@click.option("--epochs", default=TRAINING.epochs, show_default=True,
              help="Most epochs; early stopping on validation loss usually ends sooner.")
@click.option("--seed", default=TRAINING.seed, show_default=True,
              help="Seed for the split, weights, shuffles.")
@click.option("--split-seed", type=int, default=None,
              help="Seed for the folder datasets' split alone [default: --seed], so models "
                   "trained with different --seed values share their validation pictures.")
@click.option("--image-size", default=TRAINING.image_size, show_default=True,
              help="Model input side in pixels.")
@click.option("--batch-size", default=TRAINING.batch_size, show_default=True)
@click.option("--val", default=TRAINING.val, show_default=True, help="Validation share of each class.")
@click.option("--test", default=TRAINING.test, show_default=True, help="Test share of each class.")
@click.option("--patience", default=TRAINING.patience, show_default=True,
              help="Epochs without better validation loss before stopping.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Flip, rotate, zoom, brightness and contrast on training batches.")
@click.option("--workers", type=int, default=None,
              help="Processes that decode the dataset [default: all cores].")
@click.option("--label-smoothing", default=TRAINING.label_smoothing, show_default=True,
              type=click.FloatRange(0, 0.5),
              help="Soften the one-hot targets by this much.")
@click.option("--ema", default=TRAINING.ema, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Keep an exponential moving average of the weights with this momentum "
                   "(e.g. 0.998) and validate, stop and export with it (0: off).")
@click.option("--mixup", default=TRAINING.mixup, show_default=True, type=click.FloatRange(0, 1),
              help="MixUp alpha: train on blends of two pictures and of their targets (0: off).")
@click.option("--low-res", default=TRAINING.low_res, show_default=True, type=click.FloatRange(0, 1),
              help="Share of training pictures shrunk to 12-48 px and resized back, so "
                   "close-ups also teach what small street faces look like (0: off).")
@click.option("--hue", default=TRAINING.hue, show_default=True, type=click.FloatRange(0, 0.5),
              help="Turn each training picture's hue by up to this share of the colour circle "
                   "(e.g. 0.1), so a mask's colour, skin-like or not, does not decide (0: off).")
@click.option("--compute", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "bf16"]),
              help="Training arithmetic. bf16 is about twice as fast on CPUs with bfloat16 "
                   "instructions (auto picks it there); the model is exported in float32.")
@click.option("--crop-margin", default=CROP_MARGIN, show_default=True,
              type=click.FloatRange(0, 1),
              help="Box datasets: share of a box's size added on each side of a face crop "
                   "(recorded in the card; the per-face stage cuts detected faces the same way).")
@click.option("--drawn-masks/--no-drawn-masks", default=TRAINING.drawn_masks, show_default=True,
              help="Also train on masks drawn on the close-ups' bare faces, worn right and "
                   "wrongly (nose bare, chin bare, on the chin), each in its close-up's split: "
                   "the only wrongly worn masks on close-ups the model sees (maskcore draw-masks "
                   "writes them out).")
@click.option("--refit/--no-refit", default=TRAINING.refit, show_default=True,
              help="Once the validation loss has chosen the best epoch, train again from the "
                   "same start to that epoch with the box datasets' validation faces added, "
                   "and export that network (about twice the time; the folder datasets' "
                   "validation pictures stay out). make train uses it for the face network.")
@click.option("--widths", default=None, callback=lambda ctx, p, v: _widths(v),
              help="Conv block widths, comma-separated [default: 32,64,128,256,256]; each "
                   "block but the last halves the side.")
def train(data_dirs: tuple[Path, ...], out: Path, **options: Any) -> None:
    """Train the face-mask CNN on DATA_DIRS and export it to ONNX.

    \b
    Each DATA_DIR is either folder-per-class (close-ups: one sub-folder per class)
    or a box dataset (images/ and annotations/ with Pascal VOC files, like the
    shared face-mask-scenes): every box is cut as the per-face stage cuts a
    detected face, and the faces of one picture stay in one split. Classes are
    united in the order with_mask, without_mask, mask_weared_incorrect, others.

    \b
    Writes into --out:
      model.onnx, model.int8.onnx (kept when it agrees with model.onnx),
      model.json (the model card), model.keras,
      report.json (test metrics, parity, history), audit.json, split.json,
      history.png, confusion.png, calibration.png, errors.png
    Fails (exit 2) if the dataset cannot be trained on or the ONNX parity check fails.
    """
    run_command(run_training, list(data_dirs), out, **options)
