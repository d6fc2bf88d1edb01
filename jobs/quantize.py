"""``maskcore quantize MODEL_DIR --data DATA_DIR [--detector]``: add the int8 variant to a
trained model, or to a face detector.

The training job makes the variant itself; this command does the same for a model trained before
it did (the bundled model was given its variant this way). It needs the dataset the model was
trained on: the model's ``split.json`` names, by content hash, the training pictures that
calibrate the quantizer and the test pictures it is checked and scored on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from maskcore.card import CARD_NAME, ModelCard
from maskcore.cli import run_command
from maskcore.dataset import inspect, scan
from maskcore.errors import DatasetError, ModelError
from maskcore.progress import say
from maskcore.split import SPLIT_FILE, read_split_record, split_from_record

__all__ = ["quantize", "run_quantize", "run_quantize_detector"]


def _log(msg: str) -> None:
    say(msg, job="quantize")


def run_quantize(model_dir: Path, data_dir: Path, *, workers: int | None = None) -> dict[str, Any]:
    """Write ``model.int8.onnx`` beside ``model.onnx`` and list it in the card; returns the entry.

    Raises:
        ModelError: no card or split record in ``model_dir``.
        DatasetError: ``data_dir`` is not the dataset the model was trained on.
    """
    from maskcore.quantize import make_int8_variant

    card = ModelCard.read(model_dir / CARD_NAME)
    if card.whole_picture:
        raise ModelError(f"{model_dir} holds a paired model: quantize each model before "
                         f"`maskcore pair` joins them")
    try:
        record = read_split_record(model_dir)
    except ModelError as exc:
        raise ModelError(f"{exc}; `maskcore train` makes the int8 variant of such a model "
                         "itself: train it again") from exc
    if len(record.get("datasets", {})) > 1:
        _log("the model was trained on several datasets: calibrating and checking on the "
             "folder-per-class one only")
    hashes = record["hashes"]
    index = scan(data_dir)
    if not set(index.classes) <= set(card.classes):
        raise DatasetError(f"{data_dir} has classes {list(index.classes)}, the model "
                           f"{card.classes}: not the dataset it was trained on")
    _log(f"reading and preprocessing {len(index.samples):,} files ...")
    infos, arrays = inspect(index, spec=card.preprocess, workers=workers, keep_arrays=True)
    try:
        split = split_from_record(infos, hashes)
    except DatasetError as exc:
        raise DatasetError(f"{exc} ({data_dir}; record {model_dir / SPLIT_FILE})") from exc
    x_train = np.stack([arrays[k] for k in split.train])
    x_test = np.stack([arrays[k] for k in split.test])
    # Folder labels by name into the model's class order (a superset for a model trained on
    # several datasets).
    y_test = np.array([card.classes.index(index.classes[split.labels[k]]) for k in split.test],
                      dtype=np.int64)
    arrays.clear()

    entry = make_int8_variant(model_dir / card.onnx_file, x_train, x_test, y_test, card.classes,
                              log=_log)
    card.int8 = entry if entry["parity"]["passed"] else None
    card.write(model_dir)
    report = model_dir / "report.json"
    if report.is_file():
        doc = json.loads(report.read_text())
        doc["int8"] = entry
        report.write_text(json.dumps(doc, indent=2) + "\n")
    return entry


def run_quantize_detector(model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Write ``face_detector.int8.onnx`` beside the detector whose card is in ``model_dir`` and
    list it in the card when it passes (:func:`maskcore.detector_training.make_detector_int8`);
    returns the card.

    Raises:
        ModelError: no detector card in ``model_dir``.
        DatasetError: ``data_dir`` is not a Pascal VOC dataset with training and validation
            pictures.
    """
    from maskcore.detector import DEFAULT_DETECTOR
    from maskcore.detector_training import make_detector_int8, read_splits

    card_path = model_dir / DEFAULT_DETECTOR.name
    if not card_path.is_file():
        raise ModelError(f"no face detector's card {card_path}")
    _log(f"reading the training and validation pictures of {data_dir} ...")
    splits = read_splits(data_dir)
    if not splits["train"] or not splits["val"]:
        raise DatasetError(f"{data_dir}: {len(splits['train'])} training and "
                           f"{len(splits['val'])} validation pictures with boxes; both are "
                           "needed (images/ and annotations/, Pascal VOC)")
    card: dict[str, Any] = make_detector_int8(card_path, splits["train"], splits["val"])
    return card


SHORT_HELP = "Add an int8 variant (fast on CPUs) to a trained model or face detector."


@click.command(short_help=SHORT_HELP)
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--data", "data_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The dataset the model was trained on (its split.json names the pictures); "
                   "with --detector, the Pascal VOC dataset the detector was fine-tuned on.")
@click.option("--workers", type=int, default=None,
              help="Processes that decode the dataset [default: all cores].")
@click.option("--detector", is_flag=True,
              help="Quantize the face detector of MODEL_DIR (face_detector.json) instead.")
def quantize(model_dir: Path, data_dir: Path, workers: int | None, detector: bool) -> None:
    """Quantize MODEL_DIR/model.onnx to int8, check it against float32, list it in the card.

    \b
    Calibrates on up to 300 of the model's training pictures, then runs both models on
    its test split: the variant is kept (MODEL_DIR/model.int8.onnx, listed in model.json)
    only if their labels agree on at least 99.5% of the pictures. Its own test metrics
    go into the card. `batch` and `worker` run it on CPUs by default (--precision).

    \b
    With --detector: MODEL_DIR/face_detector.onnx, its neck's convolutions in int8,
    calibrated on 120 training pictures of the VOC dataset --data (split by picture,
    as `train-detector` splits it); kept (face_detector.int8.onnx, listed in
    face_detector.json) only if, on its validation pictures, it finds the faces the
    float32 network finds (recall at most 0.01 under, at most 0.05 more false boxes a
    picture). `make train-detector` does this itself.
    """
    if detector:
        card = run_command(run_quantize_detector, model_dir, data_dir)
        parity = (card.get("int8") or card["training"]["int8_dropped"])["parity"]
        click.echo(f"detector int8 variant {'kept' if card.get('int8') else 'dropped'}: "
                   f"validation recall {parity['int8']['recall']:.3f} against "
                   f"{parity['fp32']['recall']:.3f} for float32")
        return
    entry = run_command(run_quantize, model_dir, data_dir, workers=workers)
    verdict = "kept" if entry["parity"]["passed"] else "dropped"
    click.echo(f"int8 variant {verdict}: agreement {entry['parity']['label_agreement']:.2%}, "
               f"test accuracy {entry['metrics']['accuracy']:.4f}")
