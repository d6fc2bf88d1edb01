"""``maskcore train-detector DATASET --out DIR``: fine-tune the face detector on a box dataset.

The job itself is :func:`maskcore.detector_training.run_detector_training`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from maskcore.cli import run_command
from maskcore.detector_training import BASE_DETECTOR, DetectorTraining, run_detector_training

__all__ = ["train_detector"]

DEFAULTS = DetectorTraining()


@click.command(short_help="Fine-tune the face detector on a Pascal VOC box dataset.")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for face_detector.onnx and its card face_detector.json.")
@click.option("--base", default=BASE_DETECTOR, show_default=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The RetinaFace ONNX file to start from (the WIDER FACE weights).")
@click.option("--epochs", default=DEFAULTS.epochs, show_default=True, type=click.IntRange(1))
@click.option("--learning-rate", default=DEFAULTS.learning_rate, show_default=True,
              type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=DEFAULTS.seed, show_default=True,
              help="Seed for the weights' updates and the augmentation draws.")
@click.option("--refit/--no-refit", default=DEFAULTS.refit, show_default=True,
              help="Once the threshold is chosen, fit again on the training and validation "
                   "pictures together and keep that threshold (--no-refit: half the time, the "
                   "network the threshold was chosen with).")
def train_detector(dataset: Path, out: Path, base: Path, epochs: int, learning_rate: float,
                   seed: int, refit: bool) -> None:
    """Fine-tune the RetinaFace detector on the training pictures of DATASET.

    \b
    DATASET holds images/ and annotations/ (Pascal VOC, one file a picture),
    like ../shared/datasets/face-mask-scenes. Its pictures are split by the
    sha256 of their bytes (70/15/15): the network learns from the training
    pictures, the validation pictures choose its score threshold, and the test
    pictures are left for `maskcore evaluate`. Then (--refit, the default) the
    network is fitted again, by the same recipe, on the training and validation
    pictures together, keeping that threshold. Writes OUT/face_detector.onnx
    (the same graph, new weights) and OUT/face_detector.json, its card; copy
    both into models/ to make it the bundled detector. About 20 minutes on
    2 cores (9 with --no-refit).
    """
    cfg = replace(DEFAULTS, epochs=epochs, learning_rate=learning_rate, seed=seed, refit=refit)
    run_command(run_detector_training, dataset, out, base=base, cfg=cfg)
