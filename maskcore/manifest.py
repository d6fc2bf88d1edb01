"""Result rows and the files they go to: ``manifest.jsonl``, ``manifest.csv`` and ``summary.json``.

A row is one picture's result, a plain dict with the same field names in both files (the CSV
flattens ``probabilities`` into ``p_<class>`` columns). Writers write to temporary names and rename
when complete, so a crash never leaves a manifest that looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FIELDS",
    "ManifestWriter",
    "Tally",
    "csv_header",
    "error_row",
    "ok_row",
    "rows_to_csv",
    "rows_to_jsonl",
    "utc_now",
]

#: Row fields in order. Worker rows add ``etag`` after ``source``.
FIELDS = ("source", "status", "label", "score", "probabilities", "error", "sha256", "width",
          "height", "model_id", "preprocess_version", "processed_at")

UNCERTAIN = "uncertain"


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds and a Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
) -> dict[str, Any]:
    """The row of a classified picture. ``label`` is ``uncertain`` when the top score < threshold."""
    top = int(np.argmax(proba))
    # The label is decided on the score as written, so a row never shows a score at or above
    # the threshold next to "uncertain" (0.9999996 is written 1.0).
    score = round(float(proba[top]), 6)
    row = {
        "source": source,
        **(extra or {}),
        "status": "ok",
        "label": classes[top] if score >= threshold else UNCERTAIN,
        "score": score,
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, proba, strict=True)},
        "error": "",
        "sha256": sha256,
        "width": width,
        "height": height,
        "model_id": model_id,
        "preprocess_version": preprocess_version,
        "processed_at": utc_now(),
    }
    return row


def error_row(
    source: str,
    error: str,
    *,
    sha256: str = "",
    model_id: str,
    preprocess_version: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The row of a picture that could not be read or decoded."""
    return {
        "source": source,
        **(extra or {}),
        "status": "error",
        "label": "",
        "score": None,
        "probabilities": {},
        "error": error,
        "sha256": sha256,
        "width": None,
        "height": None,
        "model_id": model_id,
        "preprocess_version": preprocess_version,
        "processed_at": utc_now(),
    }


def csv_header(classes: list[str], extra_fields: tuple[str, ...] = ()) -> list[str]:
    """CSV columns: the row fields with ``probabilities`` spread over ``p_<class>`` columns."""
    head: list[str] = []
    for f in FIELDS:
        if f == "probabilities":
            head += [f"p_{c}" for c in classes]
        else:
            head.append(f)
        if f == "source":
            head += list(extra_fields)
    return head


def _csv_record(row: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    rec = {k: ("" if v is None else v) for k, v in row.items() if k != "probabilities"}
    probs = row.get("probabilities") or {}
    for c in classes:
        rec[f"p_{c}"] = probs.get(c, "")
    return rec


def rows_to_jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    """Rows as JSON Lines bytes."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def rows_to_csv(rows: Iterable[dict[str, Any]], classes: list[str],
                extra_fields: tuple[str, ...] = ()) -> bytes:
    """Rows as CSV bytes, with a header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_header(classes, extra_fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(_csv_record(r, classes))
    return buf.getvalue().encode()


class Tally:
    """Running counts for the summary: per label, errors, total."""

    def __init__(self) -> None:
        self.labels: Counter[str] = Counter()
        self.errors = 0
        self.total = 0

    def add(self, row: dict[str, Any]) -> None:
        self.total += 1
        if row["status"] == "ok":
            self.labels[row["label"]] += 1
        else:
            self.errors += 1

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "ok": self.total - self.errors, "errors": self.errors,
                "labels": dict(sorted(self.labels.items()))}


class ManifestWriter:
    """Streams rows into ``manifest.jsonl`` and ``manifest.csv`` in a folder, atomically.

    Rows are appended to ``*.partial`` files as they come; :meth:`close` renames them to their
    final names, then writes ``summary.json`` the same way. Until then no final name exists.
    """

    def __init__(self, out_dir: str | os.PathLike[str], classes: list[str],
                 formats: tuple[str, ...] = ("jsonl", "csv"),
                 extra_fields: tuple[str, ...] = ()) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.classes = classes
        self.formats = formats
        self.tally = Tally()
        for name in ("manifest.jsonl", "manifest.csv", "summary.json"):
            (self.out / name).unlink(missing_ok=True)  # an old run's files must not look current
        self._jsonl = (self.out / "manifest.jsonl.partial").open("w", encoding="utf-8") \
            if "jsonl" in formats else None
        self._csv_file = (self.out / "manifest.csv.partial").open("w", encoding="utf-8",
                                                                 newline="") \
            if "csv" in formats else None
        self._csv = None
        if self._csv_file is not None:
            self._csv = csv.DictWriter(self._csv_file,
                                       fieldnames=csv_header(classes, extra_fields),
                                       lineterminator="\n")
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row to every format."""
        self.tally.add(row)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
        if self._csv is not None:
            self._csv.writerow(_csv_record(row, self.classes))

    def close(self, summary: dict[str, Any]) -> Path:
        """Finish the files and write ``summary.json``; returns the summary's path."""
        for fh, name in ((self._jsonl, "manifest.jsonl"), (self._csv_file, "manifest.csv")):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
                (self.out / f"{name}.partial").replace(self.out / name)
        path = self.out / "summary.json"
        tmp = self.out / "summary.json.partial"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(path)
        return path
