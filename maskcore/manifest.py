"""Result rows and the files they go to: ``manifest.jsonl/csv``, ``faces.jsonl/csv``, ``summary.json``.

A picture row is one picture's result, a plain dict with the same field names in both files (the
CSV flattens ``probabilities`` into ``p_<class>`` columns and ``face_counts`` into ``n_<class>``).
A face row is one detected face. Rows are built in one place, :class:`RowBuilder`, from the
analysis results, whichever runner produced them. Between the pipeline and the writers a picture
row carries its face rows under :data:`FACE_ROWS` (so a worker's part holds a picture and its faces
together, and both are recorded exactly once); the writers split them into the two files.
Writers write to temporary names and rename when complete, so a crash never leaves a manifest that
looks finished.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from maskcore.clock import utc_now
from maskcore.errors import StorageError

__all__ = [
    "BARE_CLASS",
    "CLASS_ORDER",
    "ERROR_KINDS",
    "FACE_FIELDS",
    "FACE_ROWS",
    "FIELDS",
    "MASKED",
    "RUN_FACTS",
    "RowBuilder",
    "STOPPED",
    "STOPPED_FILES",
    "VERDICT_ORDER",
    "WRONGLY_WORN",
    "is_transient",
    "ManifestWriter",
    "Tally",
    "csv_header",
    "error_row",
    "ok_row",
    "jsonl_records",
    "read_jsonl",
    "rows_to_jsonl",
    "utc_now",
    "verdict_of",
]

#: Picture row fields in order. Worker rows add ``etag`` after ``source``. ``faces`` is the number
#: of faces found (None with ``--faces off``); ``face_counts`` counts them per label.
FIELDS = ("source", "status", "label", "score", "probabilities", "faces", "face_counts", "error",
          "error_kind", "sha256", "width", "height", "model_id", "detector_id", "preprocess_version",
          "processed_at")

#: What went wrong with one picture, as written in a row's ``error_kind`` (empty for ok rows).
#: Retry rules are written against these, never against the wording of a message:
#: only ``read`` is transient (the worker and the handler try it again later).
ERROR_KINDS = {
    "read": "the object could not be read now (network, throttling, permissions): retried",
    "not_found": "the object or its bucket is gone (deleted, a broken link): not retried",
    "not_a_file": "not a regular file (a FIFO, a device, a folder): not retried",
    "too_large": "over the size or pixel limit: not retried",
    "decode": "the bytes are not a picture in a supported format: not retried",
}

#: Face row fields in order (worker rows add ``etag`` after ``source``). The box is in pixels of
#: the original picture after EXIF orientation; ``face`` is its index within the picture.
FACE_FIELDS = ("source", "face", "x0", "y0", "x1", "y1", "face_score", "label", "score",
               "probabilities", "model_id", "detector_id", "processed_at")

#: Where a picture row carries its face rows on the way to the writers (never in a manifest).
FACE_ROWS = "face_rows"

UNCERTAIN = "uncertain"


def ok_row(
    source: str,
    proba: np.ndarray,
    classes: list[str],
    *,
    threshold: float,
    sha256: str,
    width: int,
    height: int,
    model_id: str,
    preprocess_version: str,
    extra: dict[str, Any] | None = None,
    faces: int | None = None,
    face_counts: dict[str, int] | None = None,
    label: str | None = None,
    detector_id: str = "",
) -> dict[str, Any]:
    """The row of a classified picture. ``label`` is ``uncertain`` when the top score < threshold,
    unless the caller decided it (a picture's verdict from its faces)."""
    top_label, score = label_of(proba, classes, threshold)
    row = {
        "source": source,
        **(extra or {}),
        "status": "ok",
        "label": top_label if label is None else label,
        "score": score,
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, proba, strict=True)},
        "faces": faces,
        "face_counts": face_counts or {},
        "error": "",
        "error_kind": "",
        "sha256": sha256,
        "width": width,
        "height": height,
        "model_id": model_id,
        "detector_id": detector_id,
        "preprocess_version": preprocess_version,
        "processed_at": utc_now(),
    }
    return row


def label_of(proba: np.ndarray, classes: list[str], threshold: float) -> tuple[str, float]:
    """The label and score of one probability vector (``uncertain`` below ``threshold``)."""
    top = int(np.argmax(proba))
    # The label is decided on the score as written, so a row never shows a score at or above
    # the threshold next to "uncertain" (0.9999996 is written 1.0).
    score = round(float(proba[top]), 6)
    return (classes[top] if score >= threshold else UNCERTAIN), score


def error_row(
    source: str,
    error: str,
    *,
    kind: str = "read",
    sha256: str = "",
    model_id: str,
    preprocess_version: str,
    extra: dict[str, Any] | None = None,
    detector_id: str = "",
) -> dict[str, Any]:
    """The row of a picture that could not be read or decoded."""
    return {
        "source": source,
        **(extra or {}),
        "status": "error",
        "label": "",
        "score": None,
        "probabilities": {},
        "faces": None,
        "face_counts": {},
        "error": error,
        "error_kind": kind,
        "sha256": sha256,
        "width": None,
        "height": None,
        "model_id": model_id,
        "detector_id": detector_id,
        "preprocess_version": preprocess_version,
        "processed_at": utc_now(),
    }


#: The classes the project names, in their documented order: a model trained on several
#: datasets (or on box datasets) lists these first, in this order (``maskcore.training``).
CLASS_ORDER = ("with_mask", "without_mask", "mask_weared_incorrect")
MASKED, BARE_CLASS, WRONGLY_WORN = CLASS_ORDER

#: A picture's verdict is its most serious face label, in this order; labels not listed
#: (``uncertain``) count only when a picture has no other.
VERDICT_ORDER = (BARE_CLASS, WRONGLY_WORN, MASKED)


def verdict_of(labels: list[str]) -> str:
    """The most serious label among a picture's faces (see :data:`VERDICT_ORDER`)."""
    for label in VERDICT_ORDER:
        if label in labels:
            return label
    return labels[0] if labels else ""


class RowBuilder:
    """Rows from analysis results: the one place a row is made, for every runner and job.

    Args:
        classes: the classifier's classes, in output order.
        threshold: a top score below it labels a face or picture ``uncertain``.
        model_id: the classifier's id. detector_id: the detector's ("" without the face stage).
        preprocess_version: the classifier's preprocessing version.
        row_extra: extra fields for a ref's rows (the worker adds ``etag``).
    """

    def __init__(self, classes: list[str], *, threshold: float, model_id: str, detector_id: str,
                 preprocess_version: str,
                 row_extra: Callable[[Any], dict[str, Any]] | None = None) -> None:
        self.classes = classes
        self.threshold = threshold
        self.extra = row_extra or (lambda ref: {})
        self.common = {"model_id": model_id, "preprocess_version": preprocess_version,
                       "detector_id": detector_id}

    def __call__(self, results: Iterable[Any]) -> list[dict[str, Any]]:
        """Picture rows (each with its face rows under :data:`FACE_ROWS`) for ``PictureResult``s."""
        return [self.row(r) for r in results]

    def row(self, r: Any) -> dict[str, Any]:
        """One ``maskcore.faces.PictureResult`` -> its picture row."""
        extra = self.extra(r.ref)
        if r.error:
            row = error_row(r.ref.source, r.error, kind=r.error_kind or "read", sha256=r.sha256,
                            extra=extra, **self.common)
            row[FACE_ROWS] = []
            return row
        faces = [self._face(r, k, extra) for k in range(len(r.boxes))]
        if faces:
            # The verdict: the most serious face (a close-up's main face alone); its
            # probabilities stand for the picture.
            voters = [faces[r.closeup_face]] if r.closeup_face >= 0 else faces
            verdict = verdict_of([f["label"] for f in voters])
            deciding = max((f for f in voters if f["label"] == verdict), key=lambda f: f["score"])
            proba = r.face_proba[deciding["face"]]
            label: str | None = verdict
        else:
            proba, label = r.whole, None
        counts = Counter(f["label"] for f in faces)
        row = ok_row(r.ref.source, proba, self.classes, threshold=self.threshold,
                     sha256=r.sha256, width=r.width, height=r.height, extra=extra,
                     faces=len(faces) if r.faces_checked else None,
                     face_counts=dict(sorted(counts.items())), label=label, **self.common)
        row[FACE_ROWS] = faces
        return row

    def _face(self, r: Any, k: int, extra: dict[str, Any]) -> dict[str, Any]:
        proba = r.face_proba[k]
        label, score = label_of(proba, self.classes, self.threshold)
        x0, y0, x1, y1 = (round(float(v), 1) for v in r.boxes[k])
        return {
            "source": r.ref.source, **extra, "face": k,
            "x0": x0, "y0": y0, "x1": x1, "y1": y1,
            "face_score": round(float(r.face_scores[k]), 4),
            "label": label, "score": score,
            "probabilities": {c: round(float(p), 6)
                              for c, p in zip(self.classes, proba, strict=True)},
            "model_id": self.common["model_id"], "detector_id": self.common["detector_id"],
            "processed_at": utc_now(),
        }


def is_transient(row: dict[str, Any]) -> bool:
    """Whether a row's error may pass by itself (``error_kind`` ``read``): the worker does not
    count such an object as done, and the handler asks for the message again."""
    return row.get("status") == "error" and row.get("error_kind", "read") == "read"


def csv_header(classes: list[str], extra_fields: tuple[str, ...] = (),
               fields: tuple[str, ...] = FIELDS) -> list[str]:
    """CSV columns: the row fields with ``probabilities`` spread over ``p_<class>`` columns and
    ``face_counts`` over ``n_<class>`` columns."""
    head: list[str] = []
    for f in fields:
        if f == "probabilities":
            head += [f"p_{c}" for c in classes]
        elif f == "face_counts":
            head += [f"n_{c}" for c in classes]
        else:
            head.append(f)
        if f == "source":
            head += list(extra_fields)
    return head


def _csv_record(row: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    rec = {k: ("" if v is None else v) for k, v in row.items()
           if k not in ("probabilities", "face_counts", FACE_ROWS)}
    probs = row.get("probabilities") or {}
    for c in classes:
        rec[f"p_{c}"] = probs.get(c, "")
    if "face_counts" in row:
        counts = row["face_counts"] or {}
        for c in classes:
            rec[f"n_{c}"] = counts.get(c, 0) if row.get("faces") is not None else ""
    return rec


def rows_to_jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    """Rows as JSON Lines bytes."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


#: String values shorter than this are shared between the rows read back (labels, statuses, model
#: ids, times, sources repeat from row to row and between a picture and its faces); a digest
#: (64 characters) or an error message seldom does.
_SHARED_LEN = 64


def read_jsonl(lines: Iterable[bytes], *, errors: str = "surrogateescape",
               skip_bad: bool = False) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file, one dict each, in order.

    Args:
        lines: the file's lines, split at b"\\n" only (a binary file or ``io.BytesIO`` does
            that; ``str.splitlines`` would also split at U+2028 and others, which may stand
            in a key, since the writers keep non-ASCII text as it is).
        errors: how bytes that are not UTF-8 are decoded; the default gives back the names the
            batch job wrote from a file system's undecodable bytes.
        skip_bad: skip lines that are not a JSON object instead of raising ``ValueError``.

    Keys and short string values are interned: each parsed dict would otherwise hold its own
    copies of every key and label, and a run of 100,000 pictures and 418,000 faces read back
    took 1.3 GB instead of 0.55 GB.
    """
    for record, _line in jsonl_records(lines, errors=errors, skip_bad=skip_bad):
        yield _shared(record)


def jsonl_records(lines: Iterable[bytes], *, errors: str = "surrogateescape",
                  skip_bad: bool = False) -> Iterator[tuple[dict[str, Any], bytes]]:
    """:func:`read_jsonl`'s records (not interned), each with its line's bytes, stripped: for
    a reader that keeps the compact bytes and lets the dict go."""
    for raw in lines:
        stripped = raw.strip(b" \t\r\n")
        line = stripped.decode("utf-8", errors)
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if skip_bad:
                continue
            raise
        if not isinstance(record, dict):
            if skip_bad:
                continue
            raise ValueError(f"a JSON Lines record is not an object: {line[:80]!r}")
        yield record, stripped


def _shared(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, str) and len(value) < _SHARED_LEN:
            value = sys.intern(value)
        elif isinstance(value, dict):
            value = _shared(value)
        elif isinstance(value, list):  # a worker part's face rows, under FACE_ROWS
            value = [_shared(v) if isinstance(v, dict) else v for v in value]
        out[sys.intern(key)] = value
    return out


class Tally:
    """Running counts for the summary: pictures per label, errors, total, and faces per label."""

    def __init__(self) -> None:
        self.labels: Counter[str] = Counter()
        self.face_labels: Counter[str] = Counter()
        self.errors = 0
        self.total = 0
        self.faces = 0
        self.no_face = 0  # pictures the detector looked at and found no face in

    def add(self, row: dict[str, Any]) -> None:
        self.total += 1
        if row["status"] == "ok":
            self.labels[row["label"]] += 1
            n = row.get("faces")
            if n is not None:
                self.faces += n
                self.no_face += n == 0
                self.face_labels.update(row.get("face_counts") or {})
        else:
            self.errors += 1

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "ok": self.total - self.errors, "errors": self.errors,
                "labels": dict(sorted(self.labels.items())),
                "faces": self.faces, "pictures_without_faces": self.no_face,
                "face_labels": dict(sorted(self.face_labels.items()))}


#: Cells that a spreadsheet would run as a formula start with one of these (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would take for a formula gets a leading apostrophe.

    File names are chosen by whoever fills the bucket; ``=HYPERLINK(...).jpg`` must reach a
    spreadsheet as text. Only the CSV is changed: the JSON Lines keep the exact name.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Table:
    """One result table written as ``<name>.jsonl`` and/or ``<name>.csv`` via ``.partial`` files."""

    def __init__(self, out: Path, name: str, classes: list[str], formats: tuple[str, ...],
                 fields: tuple[str, ...], extra_fields: tuple[str, ...]) -> None:
        self.out, self.name, self.classes = out, name, classes
        self.files: list[tuple[Any, str]] = []
        self._jsonl = self._csv = None
        if "jsonl" in formats:
            self._jsonl = self._open(f"{name}.jsonl")
        if "csv" in formats:
            fh = self._open(f"{name}.csv")
            # RFC 4180 line ends: the csv module quotes a cell holding any character of the
            # line terminator, so a carriage return in a file name is quoted, not a new record.
            self._csv = csv.DictWriter(fh, fieldnames=csv_header(classes, extra_fields, fields),
                                       lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
            self._csv.writeheader()

    def _open(self, final: str) -> Any:
        fh = (self.out / f"{final}.partial").open("w", encoding="utf-8", newline="",
                                                  errors="surrogateescape")
        self.files.append((fh, final))
        return fh

    def write(self, row: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
        if self._csv is not None:
            self._csv.writerow({k: csv_safe(v) for k, v in _csv_record(row, self.classes).items()})

    def close(self) -> None:
        for fh, final in self.files:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            (self.out / f"{final}.partial").replace(self.out / final)

    def close_partial(self) -> list[Path]:
        """Close the files under their ``.partial`` names; returns their paths."""
        for fh, _ in self.files:
            fh.close()
        return [self.out / f"{final}.partial" for _, final in self.files]


def _lock_folder(folder: Path) -> int | None:
    """Hold an exclusive lock on the results folder for as long as the returned descriptor is
    open; None where the system cannot lock a folder.

    Two runs writing into one folder (a nightly run that overlaps the last one, two runs
    started in the same second into ``results/<time>``) would truncate each other's
    ``.partial`` files and rename a mix. The lock is the folder's own (``flock``), so no file
    is left behind, and the system drops it when its process dies, however it dies.

    Raises:
        StorageError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"cannot write results to {folder}: another run is writing there; "
                           "wait for it to finish or choose another --out") from None
    except OSError:  # a file system without flock
        os.close(fd)
        return None
    return fd


#: A run's settings, written beside its rows while it runs (``run.json.partial``) and kept with
#: them when it is stopped, so that a run with the same settings can take it up
#: (``maskcore batch --resume``, :mod:`maskcore.resume`).
RUN_FACTS = "run.json"

#: The files of a stopped run that a run taking it up sets aside. It reads back the JSON Lines
#: (they keep every field's type) and writes its CSV again from the rows it keeps.
STOPPED_FILES = ("manifest.jsonl", "faces.jsonl", "manifest.csv", "faces.csv", RUN_FACTS)

#: Suffix of a stopped run's files while the run that takes it up copies their rows.
STOPPED = ".stopped"


class ManifestWriter:
    """Streams rows into ``manifest.jsonl/csv`` and their faces into ``faces.jsonl/csv``, atomically.

    Rows are appended to ``*.partial`` files as they come; :meth:`close` renames them to their
    final names, then writes ``summary.json`` the same way. A previous run's files in the folder
    stay as they were until then, so a run that dies leaves the last complete result in place.
    Until it is closed, stopped (:meth:`keep_unfinished`) or discarded, the folder is locked: a
    second writer there raises :class:`~maskcore.errors.StorageError`.

    Args:
        facts: the run's settings, written to ``run.json.partial`` for a run that takes this
            one up should it be stopped (removed when it is closed or discarded).
        take_up: a stopped run's files in the folder (:data:`STOPPED_FILES` ``.partial``) are
            first renamed ``*.stopped`` (under the lock), for the caller to copy the rows it
            keeps (:attr:`stopped`); they are removed once this run is closed or stopped, and
            renamed back if it is discarded, so a run that fails loses nothing of them.
    """

    def __init__(self, out_dir: str | os.PathLike[str], classes: list[str],
                 formats: tuple[str, ...] = ("jsonl", "csv"),
                 extra_fields: tuple[str, ...] = (), *,
                 facts: dict[str, Any] | None = None, take_up: bool = False) -> None:
        self.out = Path(out_dir)
        self.classes = classes
        self.formats = formats
        self.tally = Tally()
        self._tables: list[_Table] = []
        #: The stopped run's files set aside by ``take_up``, by their names (missing ones absent).
        self.stopped: dict[str, Path] = {}
        self._facts: Path | None = None
        # Releases the folder's lock; also run when the writer is dropped unclosed (a run that
        # raised), so a long-lived process can write into the folder again.
        self._unlock: Callable[[], Any] = lambda: None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(exc)
        lock = _lock_folder(self.out)  # before any file there is opened for writing
        if lock is not None:
            self._unlock = weakref.finalize(self, os.close, lock)
        try:
            if take_up:
                self._set_aside()
            self._pictures = _Table(self.out, "manifest", classes, formats, FIELDS, extra_fields)
            self._tables.append(self._pictures)
            self._faces = _Table(self.out, "faces", classes, formats, FACE_FIELDS, extra_fields)
            self._tables.append(self._faces)
            if facts is not None:
                self._facts = self.out / f"{RUN_FACTS}.partial"
                self._facts.write_text(json.dumps(facts, indent=2) + "\n")
        except OSError as exc:
            self._fail(exc)

    def _set_aside(self) -> None:
        """Rename a stopped run's files ``*.stopped`` (see ``take_up``)."""
        for name in STOPPED_FILES:
            partial = self.out / f"{name}.partial"
            if partial.exists():
                self.stopped[name] = partial.replace(self.out / f"{name}{STOPPED}")

    def _drop_stopped(self) -> None:
        """Remove a stopped run's set-aside files once their rows are this run's: by name, so
        that those of a take-up that was itself killed go too."""
        for name in STOPPED_FILES:
            (self.out / f"{name}{STOPPED}").unlink(missing_ok=True)
        self.stopped = {}

    def write(self, row: dict[str, Any]) -> None:
        """Append one picture row (and the face rows it carries) to every format."""
        row = dict(row)
        faces = row.pop(FACE_ROWS, None) or []
        self.tally.add(row)
        try:
            self._pictures.write(row)
            for face in faces:
                self._faces.write(face)
        except OSError as exc:  # a full disk, a folder gone read-only
            self._fail(exc)

    def close(self, summary: dict[str, Any]) -> Path:
        """Finish the files and write ``summary.json``; returns the summary's path."""
        try:
            self._pictures.close()
            self._faces.close()
            path = self.out / "summary.json"
            tmp = self.out / "summary.json.partial"
            tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
            tmp.replace(path)
            if self._facts is not None:
                self._facts.unlink(missing_ok=True)
            self._drop_stopped()
        except OSError as exc:
            self._fail(exc)
        self._unlock()
        return path

    def keep_unfinished(self) -> list[Path]:
        """End a run that was stopped: the rows written so far stay in the ``*.partial`` files
        (returned), and nothing final is written, so an earlier run's results stay as they were."""
        try:
            kept = self._pictures.close_partial() + self._faces.close_partial()
            if self._facts is not None:
                kept.append(self._facts)
            self._drop_stopped()  # their rows were copied before this run started its own
        except OSError as exc:
            self._fail(exc)
        self._unlock()
        return kept

    def discard(self) -> None:
        """End a run that failed, instead of :meth:`close` or :meth:`keep_unfinished`: drop the
        unfinished files (the last complete results stay) and free the folder."""
        for table in self._tables:
            for fh, final in table.files:
                try:
                    fh.close()
                except OSError:
                    pass
                try:
                    (self.out / f"{final}.partial").unlink(missing_ok=True)
                except OSError:
                    pass
        try:
            if self._facts is not None:
                self._facts.unlink(missing_ok=True)
            for name, path in self.stopped.items():  # the stopped run stays as it was
                path.replace(self.out / f"{name}.partial")
        except OSError:
            pass
        self._unlock()

    def _fail(self, exc: OSError) -> NoReturn:
        """Discard the run and say why, as a run error: exit code 2, not a traceback."""
        self.discard()
        raise StorageError(f"cannot write results to {self.out}: {exc.strerror or exc}") from exc
