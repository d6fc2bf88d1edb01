"""The training job: audit, split, train, evaluate, plot, export to ONNX, write the card.

The steps are library functions (``maskcore.dataset``, ``boxdata``, ``split``, ``cnn``,
``metrics``, ``plots``, ``export``, ``card``); :func:`run_training` runs them in order and writes
what each produces. ``maskcore train`` (``jobs/train.py``) is its command line. TensorFlow is
imported only once the data has been read, inside :func:`run_training`; the inference side
never imports this module.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from maskcore import provenance
from maskcore.boxdata import audit_boxes, format_box_audit, is_box_dataset, load_box_dataset
from maskcore.card import ModelCard, file_sha256
from maskcore.clock import utc_now
from maskcore.dataset import IMBALANCE_RATIO, audit, format_audit, inspect, scan
from maskcore.errors import DatasetError, ModelError
from maskcore.manifest import BARE_CLASS, CLASS_ORDER
from maskcore.metrics import evaluate, summary_line
from maskcore.preprocess import CROP_MARGIN, PreprocessSpec, to_input
from maskcore.progress import say
from maskcore.split import split_dataset, write_split_record

__all__ = ["TRAINING", "TrainingDefaults", "ordered_classes", "run_training"]


@dataclass(frozen=True)
class TrainingDefaults:
    """The training job's defaults, written once (``maskcore train`` shows these)."""

    epochs: int = 70
    seed: int = 0
    image_size: int = 128
    batch_size: int = 32
    val: float = 0.15
    test: float = 0.15
    patience: int = 70
    # Regularisers, all off (0) in the bundled recipe; docs/MODEL.md says what each did.
    label_smoothing: float = 0.0
    ema: float = 0.0
    mixup: float = 0.0
    # Augmentations beyond the default flip, rotation, zoom and lighting (cnn.augment_batch).
    low_res: float = 0.0
    hue: float = 0.0
    # Masks drawn on the close-ups' bare faces (maskcore.drawn_masks): the close-up network's
    # only wrongly worn masks (make train asks for them there); off for the face network.
    drawn_masks: bool = False
    # Fit again, once the validation loss has chosen the epoch, with the box datasets'
    # validation faces added (:func:`run_training`); make train asks for it for the face network.
    refit: bool = False


TRAINING = TrainingDefaults()


def _log(msg: str) -> None:
    say(msg, job="train")


# Class order of a model trained on several datasets (or on box datasets): CLASS_ORDER first,
# in its order, then any other class name, sorted. One folder-per-class dataset alone keeps its
# sorted folder names.

#: Class weights are inverse class frequencies, capped here: the rare class (93 of 3,246 street
#: faces, none among the close-ups) would otherwise weigh about 40 times a common one.
CLASS_WEIGHT_CAP = 10.0


def ordered_classes(names: set[str]) -> list[str]:
    """The union of several datasets' classes in the documented order (:data:`CLASS_ORDER`)."""
    return [c for c in CLASS_ORDER if c in names] + sorted(names - set(CLASS_ORDER))


@dataclass
class _Part:
    """One dataset's contribution to each split: inputs, class names, display names."""

    name: str
    kind: str  # "folders", "boxes" or "drawn" (masks drawn on a folder dataset's bare faces)
    x: dict[str, np.ndarray]
    labels: dict[str, list[str]]
    names: dict[str, list[str]]
    record: dict[str, Any]  # what the card says about it
    # A folder dataset's bare close-ups in each split, (path, sha256), that masks can be drawn
    # on (:func:`_drawn_part`); empty for box datasets.
    bare: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)


def balancing_weights(train_labels: dict[str, list[str]]
                      ) -> tuple[np.ndarray | None, dict[str, dict[str, float]]]:
    """Training-sample weights that balance the classes within each dataset.

    ``train_labels`` gives each dataset's training labels, in the order its samples are stacked.

    A dataset whose training classes are imbalanced (smallest over largest below
    ``IMBALANCE_RATIO``) weighs each class by its inverse frequency in that dataset, capped at
    ``CLASS_WEIGHT_CAP``; a balanced one weighs every sample 1. Weighing over the union instead
    lets one dataset's class mix tilt another's: the street faces are four fifths masked, so
    union weights made an unmasked close-up count twice a masked one, and the model called
    masked close-ups unmasked.

    Returns:
        The weights in that order, dataset after dataset (None when all are 1), and
        each dataset's ``{class: weight}`` (empty when balanced), for the log and the card.
    """
    weights: list[np.ndarray] = []
    per_dataset: dict[str, dict[str, float]] = {}
    for name, labels in train_labels.items():
        counts = {c: labels.count(c) for c in sorted(set(labels))}
        ratio = min(counts.values()) / max(counts.values()) if counts else 1.0
        chosen = {} if ratio >= IMBALANCE_RATIO else {
            c: round(min(len(labels) / (len(counts) * n), CLASS_WEIGHT_CAP), 4)
            for c, n in counts.items()}
        per_dataset[name] = chosen
        weights.append(np.array([chosen.get(c, 1.0) for c in labels], np.float32))
    if not any(per_dataset.values()):
        return None, per_dataset
    return np.concatenate(weights), per_dataset


def _folder_part(data_dir: Path, spec: PreprocessSpec, *, val: float, test: float, seed: int,
                 workers: int | None) -> tuple[_Part, dict[str, Any]]:
    index = scan(data_dir)
    if len(index.classes) < 2:
        raise DatasetError(
            f"need at least 2 class folders to train, found {len(index.classes)} "
            f"({', '.join(index.classes)}) under {index.root}"
        )
    _log(f"reading and preprocessing {len(index.samples):,} files once ...")
    infos, arrays = inspect(index, spec=spec, workers=workers, keep_arrays=True)
    report = audit(index, infos)
    click.echo(format_audit(report))
    readable = report["files_per_class"]
    per_class_ok = {c: 0 for c in index.classes}
    for i in infos:
        if not i.error:
            per_class_ok[index.classes[i.label]] += 1
    empty = [c for c, n in per_class_ok.items() if n == 0]
    if empty:
        raise DatasetError(
            f"class folder(s) with no readable picture: {', '.join(empty)} "
            f"(files found per class: {readable})"
        )
    if report["unreadable"]:
        _log(f"skipping {len(report['unreadable'])} unreadable file(s), listed above")

    split = split_dataset(infos, val=val, test=test, seed=seed)
    if not split.train or not split.val or not split.test:
        raise DatasetError(f"too few distinct pictures to split: {split.sizes()}")
    _log(f"split (one file per duplicate group): {split.sizes()}")
    part = _Part(index.root.name, "folders", {}, {}, {}, {})
    for name, positions in (("train", split.train), ("val", split.val), ("test", split.test)):
        part.x[name] = np.stack([arrays[k] for k in positions])
        part.labels[name] = [index.classes[split.labels[k]] for k in positions]
        part.names[name] = [infos[k].relpath for k in positions]
        part.bare[name] = [(index.root / infos[k].relpath, infos[k].sha256) for k in positions
                           if index.classes[split.labels[k]] == BARE_CLASS]
    arrays.clear()
    fingerprint = hashlib.sha256("\n".join(sorted({i.sha256 for i in infos if i.sha256}))
                                 .encode()).hexdigest()
    part.record = {
        "name": index.root.name,  # the dataset's folder name, not where it sat
        "kind": "folder-per-class",
        "fingerprint": fingerprint,
        "files": len(infos),
        "unreadable": len(report["unreadable"]),
        "redundant_copies": report["duplicates"]["redundant_copies"],
        "split_sizes": split.sizes(),
    }
    split_record = {"seed": seed, "shares": {"val": val, "test": test}, "sizes": split.sizes(),
                    "hashes": split.hashes}
    return part, {"audit": report, "split": split_record}


def _box_part(data_dir: Path, spec: PreprocessSpec, margin: float, workers: int | None
              ) -> tuple[_Part, dict[str, Any]]:
    _log(f"cropping the boxed faces of {data_dir} ...")
    faces = load_box_dataset(data_dir, spec=spec, margin=margin, workers=workers)
    report = audit_boxes(faces)
    click.echo(format_box_audit(report))
    part = _Part(faces.root.name, "boxes", {}, {}, {}, {})
    for name in ("train", "val", "test"):
        x, labels, names = faces.subset(name)
        if not len(x):
            raise DatasetError(f"{data_dir}: no boxed face in the {name} split")
        part.x[name], part.labels[name], part.names[name] = x, labels, names
    part.record = {"name": faces.root.name, "kind": "pascal-voc boxes",
                   "fingerprint": faces.fingerprint, "pictures": faces.pictures,
                   "faces": len(faces.labels), "unreadable": len(faces.unreadable),
                   "split": "by picture: sha256 of its bytes, 70/15/15 (maskcore.voc)",
                   "faces_per_split": report["faces_per_split"]}
    return part, {"audit": report}


def _drawn_part(folders: _Part, spec: PreprocessSpec, seed: int) -> _Part:
    """Masks drawn on ``folders``' bare close-ups (:mod:`maskcore.drawn_masks`), each drawing in
    the split of the close-up it was drawn on.

    Raises:
        DatasetError: a split has no bare close-up whose face can carry a drawn mask.
    """
    from maskcore.drawn_masks import WAYS, LandmarkFinder, drawn_close_ups

    part = _Part(f"{folders.name}-drawn-masks", "drawn", {}, {}, {}, {})
    finder = LandmarkFinder()
    ways: dict[str, dict[str, int]] = {}
    for name in ("train", "val", "test"):
        files = folders.bare[name]
        _log(f"drawing masks on the {len(files):,} bare close-ups of {folders.name}'s {name} "
             "split ...")
        arrays, labels, names, drawn = [], [], [], []
        for i, way, image in drawn_close_ups(files, seed, finder, spec):
            arrays.append(to_input(image, spec))
            labels.append(WAYS[way])
            names.append(f"{files[i][0].parent.name}/{files[i][0].name} ({way})")
            drawn.append(way)
        if not arrays:
            raise DatasetError(f"no bare close-up of {folders.name}'s {name} split has a face "
                               "to draw a mask on: train without --drawn-masks")
        part.x[name] = np.stack(arrays)
        part.labels[name], part.names[name] = labels, names
        ways[name] = {w: drawn.count(w) for w in WAYS}
        _log(f"{name}: {len(names):,} drawn ({ways[name]}), {len(files) - len(names):,} passed "
             "over (no single close-up face turned little enough)")
    part.record = {"name": part.name, "kind": "masks drawn on bare close-ups "
                   "(maskcore.drawn_masks)", "drawn_on": folders.name, "seed": seed,
                   "ways_per_split": ways}
    return part


def run_training(
    data_dirs: Path | list[Path],
    out: Path,
    *,
    epochs: int = TRAINING.epochs,
    seed: int = TRAINING.seed,
    split_seed: int | None = None,
    image_size: int = TRAINING.image_size,
    batch_size: int = TRAINING.batch_size,
    val: float = TRAINING.val,
    test: float = TRAINING.test,
    patience: int = TRAINING.patience,
    augment: bool = True,
    workers: int | None = None,
    widths: tuple[int, ...] | None = None,
    label_smoothing: float = TRAINING.label_smoothing,
    ema: float = TRAINING.ema,
    mixup: float = TRAINING.mixup,
    low_res: float = TRAINING.low_res,
    hue: float = TRAINING.hue,
    compute: str = "auto",
    crop_margin: float = CROP_MARGIN,
    drawn_masks: bool = TRAINING.drawn_masks,
    refit: bool = TRAINING.refit,
) -> dict[str, Any]:
    """Run the whole training job; returns the model card as a dict.

    ``data_dirs`` are folder-per-class datasets (close-ups) and box datasets (``images/`` and
    ``annotations/``, whose boxes are cut with the per-face stage's crop, ``crop_margin``);
    their classes are united in :data:`CLASS_ORDER`. ``seed`` seeds the weights, the shuffles,
    the augmentation and the folder datasets' split; ``split_seed``, when given, seeds that split
    instead, so runs that differ only in their weights' seed are validated on the same pictures.
    ``drawn_masks`` adds masks drawn on the folder datasets' bare close-ups, worn right and
    wrongly (:mod:`maskcore.drawn_masks`), as a dataset of their own, with the class
    ``mask_weared_incorrect`` they teach.

    ``refit``: once the first fit has chosen its best epoch on the validation split, fit again
    from the same initial weights along the same schedule, stopped at that epoch, with the box
    datasets' validation faces added to the training ones; that network is the one evaluated
    and exported. The street faces are the scarce ones (the scenes' validation pictures hold 8
    of its 93 wrongly worn masks and 90 of its 541 bare faces); the folder datasets' validation
    pictures stay out, so the refit network can still be checked on pictures it has not
    learned.

    Raises:
        DatasetError: fewer than 2 classes, or a class with no readable picture.
        ModelError: the ONNX export disagrees with the Keras model (parity check failed).
    """
    t0 = time.monotonic()
    spec = PreprocessSpec(size=(image_size, image_size))
    dirs = [data_dirs] if isinstance(data_dirs, Path | str) else list(data_dirs)
    if not dirs:
        raise DatasetError("no dataset given")
    folder_names = [Path(d).expanduser().resolve().name for d in dirs]
    if len(set(folder_names)) < len(folder_names):  # before minutes of reading, not after
        raise DatasetError(f"two datasets share a folder name ({', '.join(folder_names)}): the "
                           "card, the report and the class weights name each dataset by it; "
                           "rename one")
    parts: list[_Part] = []
    records: dict[str, Any] = {}
    for d in dirs:
        if is_box_dataset(d):
            part, rec = _box_part(Path(d), spec, crop_margin, workers)
        else:
            part, rec = _folder_part(Path(d), spec, val=val, test=test,
                                     seed=seed if split_seed is None else split_seed,
                                     workers=workers)
        parts.append(part)
        records[part.name] = rec
    if refit and not any(p.kind == "boxes" for p in parts):  # before the first fit's minutes
        raise DatasetError("--refit adds the box datasets' validation faces to training, and "
                           "no box dataset was given")
    names = {c for p in parts for s in p.labels.values() for c in s}
    if drawn_masks:
        parts += [_drawn_part(p, spec, seed) for p in list(parts) if p.bare]
        names = {c for p in parts for s in p.labels.values() for c in s}
    # One folder dataset keeps its own order (its sorted folder names, as always); several
    # datasets unite their classes in the documented order.
    classes = sorted(names) if len(parts) == 1 and parts[0].kind == "folders" \
        else ordered_classes(names)
    if len(classes) < 2:
        raise DatasetError(f"need at least 2 classes to train, found {classes}")
    index_of = {c: i for i, c in enumerate(classes)}

    def stack(split_name: str, only: list[_Part] | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        chosen = only or parts
        x = np.concatenate([p.x[split_name] for p in chosen])
        y = np.array([index_of[c] for p in chosen for c in p.labels[split_name]], np.int64)
        names = [f"{p.name}/{n}" for p in chosen for n in p.names[split_name]]
        return x, y, names

    x_train, y_train, _ = stack("train")
    x_val, y_val, _ = stack("val")
    x_test, y_test, test_names = stack("test")
    _log(f"{len(classes)} classes {classes}; train {len(y_train)}, val {len(y_val)}, "
         f"test {len(y_test)} samples")

    sample_weight, class_weight = balancing_weights({p.name: p.labels["train"] for p in parts})
    for name, weights in class_weight.items():
        _log(f"{name}: class weights {weights}" if weights else f"{name}: classes balanced "
             f"(ratio >= {IMBALANCE_RATIO}), no class weights")

    # TensorFlow from here on only.
    from maskcore import cnn, export, plots

    cfg = cnn.TrainConfig(epochs=epochs, batch_size=batch_size, patience=patience,
                          augment=augment, seed=seed, label_smoothing=label_smoothing, ema=ema,
                          mixup=mixup, low_res=low_res, hue=hue)
    if widths:
        cfg = replace(cfg, widths=tuple(widths))
    gpus = cnn.setup_tensorflow(seed)
    cfg = replace(cfg, compute=cnn.resolve_compute(compute, gpus))
    _log(f"TensorFlow sees {len(gpus)} GPU(s)" + (f": {gpus}" if gpus else "; training on CPU")
         + f"; {cfg.compute} arithmetic")
    model = cnn.build_model(len(classes), spec.size, cfg)
    flops = cnn.count_flops(model)
    _log(f"model: {model.count_params():,} parameters, {flops / 1e9:.3f} GFLOPs per picture")
    t_fit = time.monotonic()
    history = cnn.fit(model, x_train, y_train, x_val, y_val, cfg, sample_weight)
    fit_seconds = time.monotonic() - t_fit
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    refit_record: dict[str, Any] | None = None
    if refit:
        model, refit_record = _refit(parts, index_of, spec=spec, cfg=cfg, seed=seed,
                                     epochs=best_epoch)
    if cfg.compute != "fp32":
        model = cnn.float32_copy(model, cfg)  # evaluated, exported and saved in float32

    proba = cnn.predict(model, x_test)
    metrics = evaluate(y_test, proba, classes)
    _log("test: " + summary_line(metrics))
    # Each dataset's own test split, scored alone: accuracy over all of them hides the close-ups
    # behind the street faces and the rare class behind both.
    per_dataset = {}
    if len(parts) > 1:
        for p in parts:
            xp, yp, _ = stack("test", [p])
            m = evaluate(yp, cnn.predict(model, xp), classes)
            per_dataset[p.name] = m
            _log(f"test, {p.name} alone: " + summary_line(m) + "; recall "
                 + ", ".join(f"{c} {v['recall']:.3f}" for c, v in m["per_class"].items()
                             if v["support"]))

    out.mkdir(parents=True, exist_ok=True)
    plots.plot_history(history, out / "history.png",
                       refit_record["history"] if refit_record else None)
    plots.plot_confusion(metrics["confusion"]["rows_true_cols_pred"], classes,
                         out / "confusion.png")
    plots.plot_calibration(metrics["calibration_bins"], metrics["ece"], out / "calibration.png")
    plots.plot_errors(x_test, y_test, proba, classes, test_names, out / "errors.png")

    onnx_path = export.export_onnx(model, out / "model.onnx", classes=classes, spec=spec)
    parity = export.check_parity(model, onnx_path, x_test)
    _log(f"parity on {parity['n']} test pictures: max abs diff {parity['max_abs_diff']:.2e}, "
         f"labels identical: {parity['labels_identical']}")
    cnn.save_for_inference(model, out / "model.keras")
    int8 = None
    if parity["passed"]:
        from maskcore.quantize import make_int8_variant

        int8 = make_int8_variant(onnx_path, x_train, x_test, y_test, classes, log=_log)

    folder_parts = [p for p in parts if p.kind == "folders"]
    split_doc: dict[str, Any] = {}
    if len(folder_parts) == 1:  # the record `maskcore quantize` rebuilds the split from
        split_doc.update(records[folder_parts[0].name]["split"])
    split_doc["datasets"] = {p.name: p.record for p in parts}
    write_split_record(out, split_doc)
    (out / "audit.json").write_text(json.dumps(
        {name: rec["audit"] for name, rec in records.items()}, indent=2) + "\n")
    report_doc = {"test": metrics, "test_per_dataset": per_dataset, "parity": parity,
                  "history": history, "best_epoch": best_epoch, "class_weight": class_weight,
                  "refit": refit_record, "int8": int8}
    (out / "report.json").write_text(json.dumps(report_doc, indent=2) + "\n")
    training_data = (dict(folder_parts[0].record) if len(parts) == 1 and folder_parts
                     else {"datasets": [p.record for p in parts]})

    card = ModelCard(
        classes=classes,
        preprocess=spec,
        onnx_file="model.onnx",
        onnx_sha256=file_sha256(onnx_path),
        int8=int8 if int8 and int8["parity"]["passed"] else None,
        extra={
            "created_at": utc_now("seconds"),
            "architecture": "maskcore_cnn: stride-2 stem, conv-BN-ReLU blocks "
                            + "-".join(map(str, cfg.widths)) + ", GAP, softmax",
            "parameters": int(model.count_params()),
            "gflops_per_picture": round(flops / 1e9, 4),
            "opset": export.OPSET,
            "training_data": training_data,
            "face_crop": {"margin": crop_margin,
                          "rule": "maskcore.preprocess.face_region: the box grown by margin on "
                                  "each side, made square, clipped to the picture"},
            "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece", "errors",
                                                "n", "per_class")},
            "metrics_per_dataset": {
                name: {k: m[k] for k in ("accuracy", "macro_f1", "errors", "n", "per_class")}
                for name, m in per_dataset.items()},
            "parity": parity,
            "training": {
                "config": {**asdict(cfg), "widths": list(cfg.widths)},
                "epochs_run": len(history["loss"]),
                "best_epoch": best_epoch,
                "class_weight": class_weight,
                "fit_seconds": round(fit_seconds, 1),
                **({"refit": {k: v for k, v in refit_record.items() if k != "history"}}
                   if refit_record else {}),
                "total_seconds": round(time.monotonic() - t0, 1),
                "gpus": gpus,
            },
            "versions": provenance.versions(),
            "machine": provenance.machine(),
        },
    )
    card.write(out)
    if not parity["passed"]:
        raise ModelError(
            f"ONNX parity check failed: max abs diff {parity['max_abs_diff']:.2e} "
            f"(allowed {parity['atol']:.0e}), labels identical: {parity['labels_identical']}"
        )
    _log(f"done in {time.monotonic() - t0:.0f}s: model id {card.model_id}; wrote "
         + ", ".join(sorted(p.name for p in out.iterdir())))
    return card.to_dict()


def _refit_arrays(parts: list[_Part], index_of: dict[str, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             dict[str, list[str]]]:
    """The refit's training arrays (every training sample, and the box datasets' validation
    faces after each one's own), what validation is left (the folder datasets'), and each
    dataset's training labels in stacking order (for :func:`balancing_weights`)."""
    xs, labels, vx, vlabels = [], {}, [], []
    for p in parts:
        added = p.kind == "boxes"
        xs.append(np.concatenate([p.x["train"], p.x["val"]]) if added else p.x["train"])
        labels[p.name] = p.labels["train"] + (p.labels["val"] if added else [])
        if not added:
            vx.append(p.x["val"])
            vlabels += p.labels["val"]
    x = np.concatenate(xs)
    y = np.array([index_of[c] for p in parts for c in labels[p.name]], np.int64)
    x_val = np.concatenate(vx) if vx else np.zeros((0, *x.shape[1:]), x.dtype)
    y_val = np.array([index_of[c] for c in vlabels], np.int64)
    return x, y, x_val, y_val, labels


def _refit(parts: list[_Part], index_of: dict[str, int], *, spec: PreprocessSpec, cfg: Any,
           seed: int, epochs: int) -> tuple[Any, dict[str, Any]]:
    """Fit a fresh network (the first fit's initial weights: the same seed) along the same
    schedule for ``epochs`` epochs on the training samples plus the box datasets' validation
    faces (:func:`_refit_arrays`); returns it and what the card says about the refit."""
    from maskcore import cnn

    added = {p.name: len(p.labels["val"]) for p in parts if p.kind == "boxes"}
    x, y, x_val, y_val, labels = _refit_arrays(parts, index_of)
    weights, class_weight = balancing_weights(labels)
    _log(f"refit: {epochs} epochs (the first fit's best) on {len(y)} samples, adding the "
         f"validation faces of {', '.join(f'{k} ({n})' for k, n in added.items())}; "
         f"{len(y_val)} validation samples left out")
    cnn.reseed(seed)  # the same initial weights and draws as the first fit
    model = cnn.build_model(len(index_of), spec.size, cfg)
    t = time.monotonic()
    history = cnn.fit(model, x, y, x_val, y_val, cfg, weights, stop_after=epochs)
    return model, {"epochs": epochs, "validation_added": added, "samples": len(y),
                   "class_weight": class_weight, "fit_seconds": round(time.monotonic() - t, 1),
                   "history": history}
